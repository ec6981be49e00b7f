#include "vision/image_decode.h"

#include <csetjmp>
#include <cstdio>
#include <cstring>
#include <memory>

#include "util/error.h"

#ifdef TANDEM_HAVE_JPEG
#include <jerror.h>
#include <jpeglib.h>
#endif
#ifdef TANDEM_HAVE_PNG
#include <png.h>
#endif
#ifdef TANDEM_HAVE_GIF
#include <gif_lib.h>
#endif
#ifdef TANDEM_HAVE_WEBP
#include <webp/decode.h>
#include <webp/demux.h>
#endif

namespace tandem::vision {
namespace {

void check_size(const char* format, int64_t width, int64_t height, const DecodeLimits& limits) {
  if (width <= 0 || height <= 0) fail("the {} image is {}x{} pixels: an image needs at least one pixel", format, width, height);
  if (width * height > limits.max_pixels)
    fail("the {} image is {}x{} pixels ({} pixels), more than the limit of {}", format, width, height, width * height,
         limits.max_pixels);
}

// RGBA → RGB by dropping alpha: Pillow's convert("RGB"), which transformers' convert_to_rgb applies.
void drop_alpha(const uint8_t* rgba, int64_t pixels, uint8_t* rgb) {
  for (int64_t i = 0; i < pixels; ++i)
    for (int c = 0; c < 3; ++c) rgb[3 * i + c] = rgba[4 * i + c];
}

// The decoders below use C libraries that report errors by longjmp. Everything they write goes to
// heap objects created before setjmp (never to locals changed after it), so a longjmp leaves no
// C++ object in an indeterminate state.

#ifdef TANDEM_HAVE_JPEG
struct JpegError {
  jpeg_error_mgr mgr;
  std::jmp_buf jump;
  char message[JMSG_LENGTH_MAX] = {};
  bool truncated = false;
};

void jpeg_fatal(j_common_ptr c) {
  auto* e = reinterpret_cast<JpegError*>(c->err);
  c->err->format_message(c, e->message);
  std::longjmp(e->jump, 1);
}

// Pillow refuses a truncated JPEG (libjpeg would pad it with grey and only warn); other warnings
// (e.g. extraneous bytes) are ignored, as Pillow ignores them.
void jpeg_warning(j_common_ptr c, int level) {
  if (level < 0 && c->err->msg_code == JWRN_JPEG_EOF) reinterpret_cast<JpegError*>(c->err)->truncated = true;
}

RgbImage decode_jpeg(std::span<const uint8_t> bytes, const DecodeLimits& limits) {
  auto cinfo = std::make_unique<jpeg_decompress_struct>();
  auto err = std::make_unique<JpegError>();
  auto img = std::make_unique<RgbImage>();
  auto row = std::make_unique<std::vector<uint8_t>>();
  cinfo->err = jpeg_std_error(&err->mgr);
  err->mgr.error_exit = jpeg_fatal;
  err->mgr.emit_message = jpeg_warning;
  if (setjmp(err->jump)) {
    jpeg_destroy_decompress(cinfo.get());
    fail("the JPEG data is corrupt: {}", err->message);
  }
  jpeg_create_decompress(cinfo.get());
  jpeg_mem_src(cinfo.get(), bytes.data(), static_cast<unsigned long>(bytes.size()));
  jpeg_read_header(cinfo.get(), TRUE);
  if (cinfo->jpeg_color_space == JCS_CMYK || cinfo->jpeg_color_space == JCS_YCCK) {
    jpeg_destroy_decompress(cinfo.get());
    fail("CMYK JPEG images are not supported; convert the image to RGB");
  }
  if (static_cast<int64_t>(cinfo->image_width) * cinfo->image_height > limits.max_pixels || !cinfo->image_width ||
      !cinfo->image_height) {
    const int64_t w = cinfo->image_width, h = cinfo->image_height;
    jpeg_destroy_decompress(cinfo.get());
    check_size("JPEG", w, h, limits);
  }
  const bool gray = cinfo->num_components == 1;
  cinfo->out_color_space = gray ? JCS_GRAYSCALE : JCS_RGB;  // libjpeg's defaults otherwise, as Pillow
  jpeg_start_decompress(cinfo.get());
  img->width = static_cast<int>(cinfo->output_width);
  img->height = static_cast<int>(cinfo->output_height);
  img->rgb.resize(static_cast<size_t>(img->width) * img->height * 3);
  row->resize(static_cast<size_t>(img->width) * cinfo->output_components);
  while (cinfo->output_scanline < cinfo->output_height) {
    uint8_t* out = img->rgb.data() + static_cast<size_t>(cinfo->output_scanline) * img->width * 3;
    JSAMPROW rows[1] = {gray ? row->data() : out};
    jpeg_read_scanlines(cinfo.get(), rows, 1);
    if (gray)
      for (int x = 0; x < img->width; ++x) out[3 * x] = out[3 * x + 1] = out[3 * x + 2] = (*row)[x];
  }
  jpeg_finish_decompress(cinfo.get());
  jpeg_destroy_decompress(cinfo.get());
  if (err->truncated) fail("the JPEG data is truncated");
  return std::move(*img);
}
#endif

#ifdef TANDEM_HAVE_PNG
struct PngReader {
  std::span<const uint8_t> bytes;
  size_t pos = 0;
  std::string error;
};

void png_read(png_structp png, png_bytep out, png_size_t n) {
  auto* r = static_cast<PngReader*>(png_get_io_ptr(png));
  if (r->bytes.size() - r->pos < n) png_error(png, "the PNG data is truncated");
  std::memcpy(out, r->bytes.data() + r->pos, n);
  r->pos += n;
}

void png_fatal(png_structp png, png_const_charp message) {
  static_cast<PngReader*>(png_get_error_ptr(png))->error = message;
  png_longjmp(png, 1);
}

void png_warning_ignored(png_structp, png_const_charp) {}

RgbImage decode_png(std::span<const uint8_t> bytes, const DecodeLimits& limits) {
  // The size from the IHDR chunk (always first, at byte 16), checked before libpng reads further.
  if (bytes.size() >= 24 && std::memcmp(bytes.data() + 12, "IHDR", 4) == 0) {
    auto be32 = [&](size_t at) {
      return (uint32_t{bytes[at]} << 24) | (uint32_t{bytes[at + 1]} << 16) | (uint32_t{bytes[at + 2]} << 8) | bytes[at + 3];
    };
    check_size("PNG", be32(16), be32(20), limits);
  }
  auto reader = std::make_unique<PngReader>();
  reader->bytes = bytes;
  auto img = std::make_unique<RgbImage>();
  auto buffer = std::make_unique<std::vector<uint8_t>>();
  auto rows = std::make_unique<std::vector<png_bytep>>();
  png_structp png = png_create_read_struct(PNG_LIBPNG_VER_STRING, reader.get(), png_fatal, png_warning_ignored);
  if (!png) fail("out of memory reading a PNG");
  png_infop info = png_create_info_struct(png);
  if (!info) {
    png_destroy_read_struct(&png, nullptr, nullptr);
    fail("out of memory reading a PNG");
  }
  if (setjmp(png_jmpbuf(png))) {
    png_destroy_read_struct(&png, &info, nullptr);
    fail("the PNG data is corrupt: {}", reader->error);
  }
  png_set_read_fn(png, reader.get(), png_read);
  png_set_user_limits(png, 0x7fffffff, 0x7fffffff);  // sizes are checked below, against `limits`
  png_read_info(png, info);
  const int64_t w = png_get_image_width(png, info), h = png_get_image_height(png, info);
  if (w * h > limits.max_pixels) {
    png_destroy_read_struct(&png, &info, nullptr);
    check_size("PNG", w, h, limits);
  }
  const int color = png_get_color_type(png, info), depth = png_get_bit_depth(png, info);
  // Pillow reads 16-bit greyscale as mode I;16, whose conversion to RGB clips each value at 255;
  // every other 16-bit layout keeps the high byte of each sample (png_set_strip_16 does the same).
  const bool gray16 = depth == 16 && color == PNG_COLOR_TYPE_GRAY && !png_get_valid(png, info, PNG_INFO_tRNS);
  png_set_expand(png);  // palette → RGB, grey below 8 bits → 8, tRNS → alpha
  if (!gray16) png_set_strip_16(png);
  png_set_gray_to_rgb(png);
  png_set_interlace_handling(png);
  png_read_update_info(png, info);
  const int channels = png_get_channels(png, info);
  const size_t row_bytes = png_get_rowbytes(png, info);
  buffer->resize(row_bytes * static_cast<size_t>(h));
  rows->resize(static_cast<size_t>(h));
  for (int64_t y = 0; y < h; ++y) (*rows)[y] = buffer->data() + y * row_bytes;
  png_read_image(png, rows->data());
  png_destroy_read_struct(&png, &info, nullptr);
  if (channels != 3 && channels != 4) fail("unexpected PNG layout ({} channels after expansion)", channels);
  img->width = static_cast<int>(w);
  img->height = static_cast<int>(h);
  img->rgb.resize(static_cast<size_t>(w * h * 3));
  if (gray16) {  // samples are big-endian 16-bit, replicated into R, G, B by png_set_gray_to_rgb
    for (int64_t i = 0; i < w * h * 3; ++i) {
      const unsigned v = ((*buffer)[2 * i] << 8) | (*buffer)[2 * i + 1];
      img->rgb[i] = static_cast<uint8_t>(v > 255 ? 255 : v);
    }
  } else if (channels == 4) {
    drop_alpha(buffer->data(), w * h, img->rgb.data());
  } else {
    std::memcpy(img->rgb.data(), buffer->data(), img->rgb.size());
  }
  return std::move(*img);
}
#endif

#ifdef TANDEM_HAVE_GIF
struct GifReader {
  std::span<const uint8_t> bytes;
  size_t pos = 0;
};

int gif_read(GifFileType* gif, GifByteType* out, int n) {
  auto* r = static_cast<GifReader*>(gif->UserData);
  const size_t take = std::min(static_cast<size_t>(n), r->bytes.size() - r->pos);
  std::memcpy(out, r->bytes.data() + r->pos, take);
  r->pos += take;
  return static_cast<int>(take);
}

struct GifCloser {
  void operator()(GifFileType* g) const { DGifCloseFile(g, nullptr); }
};

RgbImage decode_gif(std::span<const uint8_t> bytes, const DecodeLimits& limits) {
  GifReader reader{bytes, 0};
  int error = 0;
  std::unique_ptr<GifFileType, GifCloser> gif(DGifOpen(&reader, gif_read, &error));
  auto corrupt = [&](int code) { fail("the GIF data is corrupt or truncated: {}", GifErrorString(code)); };
  if (!gif) corrupt(error);
  const int W = gif->SWidth, H = gif->SHeight;
  check_size("GIF", W, H, limits);
  int transparent = -1;
  for (;;) {
    GifRecordType type;
    if (DGifGetRecordType(gif.get(), &type) == GIF_ERROR) corrupt(gif->Error);
    if (type == TERMINATE_RECORD_TYPE) fail("the GIF data holds no image");
    if (type == EXTENSION_RECORD_TYPE) {
      int code = 0;
      GifByteType* ext = nullptr;
      if (DGifGetExtension(gif.get(), &code, &ext) == GIF_ERROR) corrupt(gif->Error);
      // Graphics control: byte 1 bit 0 says byte 4 is the transparent colour index.
      if (code == GRAPHICS_EXT_FUNC_CODE && ext && ext[0] >= 4 && (ext[1] & 1)) transparent = ext[4];
      while (ext)
        if (DGifGetExtensionNext(gif.get(), &ext) == GIF_ERROR) corrupt(gif->Error);
      continue;
    }
    if (type != IMAGE_DESC_RECORD_TYPE) continue;
    if (DGifGetImageDesc(gif.get()) == GIF_ERROR) corrupt(gif->Error);
    const GifImageDesc& d = gif->Image;
    const ColorMapObject* map = d.ColorMap ? d.ColorMap : gif->SColorMap;
    if (!map) fail("the GIF image has no colour table");
    if (d.Width <= 0 || d.Height <= 0 || d.Left < 0 || d.Top < 0 || d.Left + d.Width > W || d.Top + d.Height > H)
      fail("the GIF frame ({}x{} at {},{}) lies outside its {}x{} screen", d.Width, d.Height, d.Left, d.Top, W, H);
    std::vector<GifPixelType> index(static_cast<size_t>(d.Width) * d.Height);
    auto read_line = [&](int y) {
      if (DGifGetLine(gif.get(), index.data() + static_cast<size_t>(y) * d.Width, d.Width) == GIF_ERROR)
        corrupt(gif->Error);
    };
    if (d.Interlace) {
      for (auto [start, step] : {std::pair{0, 8}, {4, 8}, {2, 4}, {1, 2}})
        for (int y = start; y < d.Height; y += step) read_line(y);
    } else {
      for (int y = 0; y < d.Height; ++y) read_line(y);
    }
    // The first frame on the logical screen; outside it, the transparent index if there is one,
    // else the background colour. Transparency is dropped: every index shows its palette colour.
    const int fill = transparent >= 0 ? transparent : gif->SBackGroundColor;
    RgbImage img;
    img.width = W, img.height = H;
    img.rgb.resize(static_cast<size_t>(W) * H * 3);
    for (int y = 0; y < H; ++y) {
      for (int x = 0; x < W; ++x) {
        const bool inside = x >= d.Left && x < d.Left + d.Width && y >= d.Top && y < d.Top + d.Height;
        const int i = inside ? index[static_cast<size_t>(y - d.Top) * d.Width + (x - d.Left)] : fill;
        uint8_t* out = &img.rgb[(static_cast<size_t>(y) * W + x) * 3];
        if (i < map->ColorCount) {
          out[0] = map->Colors[i].Red, out[1] = map->Colors[i].Green, out[2] = map->Colors[i].Blue;
        } else {
          out[0] = out[1] = out[2] = 0;  // an index past the colour table (Pillow's palette is zero there)
        }
      }
    }
    return img;
  }
}
#endif

#ifdef TANDEM_HAVE_WEBP
RgbImage decode_webp(std::span<const uint8_t> bytes, const DecodeLimits& limits) {
  WebPBitstreamFeatures f;
  if (WebPGetFeatures(bytes.data(), bytes.size(), &f) != VP8_STATUS_OK) fail("the WebP data is corrupt or truncated");
  check_size("WebP", f.width, f.height, limits);
  RgbImage img;
  img.width = f.width, img.height = f.height;
  img.rgb.resize(static_cast<size_t>(f.width) * f.height * 3);
  const int64_t pixels = static_cast<int64_t>(f.width) * f.height;
  if (f.has_animation) {  // the first frame, as Pillow shows an animated WebP
    WebPData data{bytes.data(), bytes.size()};
    WebPAnimDecoderOptions opts;
    WebPAnimDecoderOptionsInit(&opts);
    opts.color_mode = MODE_RGBA;
    std::unique_ptr<WebPAnimDecoder, void (*)(WebPAnimDecoder*)> dec(WebPAnimDecoderNew(&data, &opts),
                                                                      WebPAnimDecoderDelete);
    uint8_t* frame = nullptr;
    int timestamp = 0;
    if (!dec || !WebPAnimDecoderGetNext(dec.get(), &frame, &timestamp))
      fail("the animated WebP data is corrupt or truncated");
    drop_alpha(frame, pixels, img.rgb.data());
    return img;
  }
  if (f.has_alpha) {
    std::unique_ptr<uint8_t, void (*)(void*)> rgba(WebPDecodeRGBA(bytes.data(), bytes.size(), nullptr, nullptr), WebPFree);
    if (!rgba) fail("the WebP data is corrupt or truncated");
    drop_alpha(rgba.get(), pixels, img.rgb.data());
  } else if (!WebPDecodeRGBInto(bytes.data(), bytes.size(), img.rgb.data(), img.rgb.size(), f.width * 3)) {
    fail("the WebP data is corrupt or truncated");
  }
  return img;
}
#endif

bool starts_with(std::span<const uint8_t> b, std::initializer_list<uint8_t> magic, size_t at = 0) {
  if (b.size() < at + magic.size()) return false;
  size_t i = at;
  for (uint8_t m : magic)
    if (b[i++] != m) return false;
  return true;
}

// Unused in a build that has every decoder library.
[[noreturn, maybe_unused]] void not_built(const char* format) {
  fail("this build of tandem has no {} decoder (it was built without its library; see scripts/install-deps.sh)",
       format);
}

}  // namespace

std::vector<std::string> image_formats() {
  std::vector<std::string> f;
#ifdef TANDEM_HAVE_JPEG
  f.push_back("jpeg");
#endif
#ifdef TANDEM_HAVE_PNG
  f.push_back("png");
#endif
#ifdef TANDEM_HAVE_GIF
  f.push_back("gif");
#endif
#ifdef TANDEM_HAVE_WEBP
  f.push_back("webp");
#endif
  return f;
}

RgbImage decode_image(std::span<const uint8_t> bytes, const DecodeLimits& limits) {
  if (bytes.empty()) fail("the image data is empty");
  if (starts_with(bytes, {0xFF, 0xD8, 0xFF})) {
#ifdef TANDEM_HAVE_JPEG
    return decode_jpeg(bytes, limits);
#else
    not_built("JPEG");
#endif
  }
  if (starts_with(bytes, {0x89, 'P', 'N', 'G', 0x0D, 0x0A, 0x1A, 0x0A})) {
#ifdef TANDEM_HAVE_PNG
    return decode_png(bytes, limits);
#else
    not_built("PNG");
#endif
  }
  if (starts_with(bytes, {'G', 'I', 'F', '8', '7', 'a'}) || starts_with(bytes, {'G', 'I', 'F', '8', '9', 'a'})) {
#ifdef TANDEM_HAVE_GIF
    return decode_gif(bytes, limits);
#else
    not_built("GIF");
#endif
  }
  if (starts_with(bytes, {'R', 'I', 'F', 'F'}) && starts_with(bytes, {'W', 'E', 'B', 'P'}, 8)) {
#ifdef TANDEM_HAVE_WEBP
    return decode_webp(bytes, limits);
#else
    not_built("WebP");
#endif
  }
  fail("the image data is not a JPEG, PNG, GIF or WebP file (unrecognised first bytes)");
}

}  // namespace tandem::vision
