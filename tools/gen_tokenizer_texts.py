#!/usr/bin/env python3
"""Deterministically generates the tokenizer golden-test texts (tests/tokenizer/golden/texts.json).

Runs anywhere with Python 3 (no third-party packages). The texts cover prose, code in several
languages, CJK, RTL scripts, emoji ZWJ sequences, combining marks, whitespace runs, control
characters, literal special-token strings, unusual Unicode, random code points, and one ~50 KB
document. tools/golden_tokenizers.py encodes them with HF `tokenizers`.

    python3 tools/gen_tokenizer_texts.py > tests/tokenizer/golden/texts.json
"""
import json
import random
import sys
import unicodedata

PROSE = [
    "The quick brown fox jumps over the lazy dog.",
    "Hello, my dog is cute",
    "It was the best of times, it was the worst of times, it was the age of wisdom, it was the age of foolishness.",
    "Speculative decoding drafts several tokens with a small model and verifies them in one pass of the large model.",
    "Don't stop believing; I'm sure you're right, we've done it, they'll see, she'd agree, it's fine.",
    "DON'T SHOUT! I'M HERE, YOU'RE THERE, WE'VE WON, THEY'LL LOSE, HE'D KNOW, IT'S OVER.",
    "Mixed CaSe WoRdS and camelCaseIdentifiers and snake_case_names and SCREAMING_CASE.",
    "Prices: $19.99, €5,00, £3.50, ¥1000, 1,234,567.89 and 3.14159265358979 and 1e-9.",
    "Email me at someone@example.com or visit https://example.org/path?q=1&r=2#frag.",
    "Schöne Grüße aus München! Übermäßig große Straße. Ça va? Où est la bibliothèque? ¿Qué tal? ¡Hola!",
    "Résumé naïve café coöperate façade jalapeño piñata São Paulo Kraków Łódź Ærøskøbing.",
    "Привет, мир! Съешь же ещё этих мягких французских булок, да выпей чаю.",
    "Γειά σου Κόσμε! Ξεσκεπάζω την ψυχοφθόρα βδελυγμία.",
    "Tiếng Việt có dấu: Xin chào thế giới, tôi là một mô hình ngôn ngữ.",
    "नमस्ते दुनिया! यह एक परीक्षण वाक्य है। हिन्दी में अंक: १२३४५",
    "สวัสดีชาวโลก ภาษาไทยไม่มีการเว้นวรรคระหว่างคำ",
    "ሰላም ለዓለም። ქართული ენა. Հայերեն լեզու. ᓀᐦᐃᔭᐍᐏᐣ",
    "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor incididunt ut labore.",
]

CJK = [
    "日本語のテキストです。東京は日本の首都です。",
    "我爱自然语言处理。今天天气很好，我们去公园散步吧！",
    "漢字、ひらがな、カタカナ、ﾊﾝｶｸｶﾀｶﾅ、全角ＡＢＣ１２３。",
    "한국어 문장입니다. 안녕하세요, 세계! 한글은 과학적인 문자입니다.",
    "中文标点：，。！？、；：“”‘’（）《》【】……——",
    "𠀀𠀁𪚥 (CJK Extension B) and 〇〡〢 and ㍿ ㈱ ㊙",
]

RTL = [
    "مرحبا بالعالم! هذا نص عربي للاختبار.",
    "العربية مع أرقام ١٢٣٤٥٦٧٨٩٠ و English words mixed in.",
    "שלום עולם! זהו טקסט בעברית עם ניקוד: בְּרֵאשִׁית בָּרָא",
    "فارسی: سلام دنیا، حال شما چطور است؟ ۱۲۳۴",
    "\u202eright-to-left override\u202c and \u200fRLM\u200e LRM marks",
    "اردو: یہ ایک جملہ ہے۔",
]

EMOJI = [
    "😀😃😄😁😆😅😂🤣🥲☺️😊",
    "👨‍👩‍👧‍👦 family, 👩🏽‍💻 technologist, 🏳️‍🌈 flag, 🧑🏿‍🤝‍🧑🏻 people",
    "Flags: 🇺🇸🇬🇧🇯🇵🇩🇪🇫🇷 keycaps: 1️⃣2️⃣#️⃣*️⃣ skin: 👋🏻👋🏼👋🏽👋🏾👋🏿",
    "❤️‍🔥 ❤️‍🩹 🫠 🫶🏾 🪿 tag sequence: 🏴\U000e0067\U000e0062\U000e0073\U000e0063\U000e0074\U000e007f",
    "Text with emoji inline 🚀 launching soon 🎉🎉🎉 and ✅ done ❌ failed ⚠️ warning",
]

COMBINING = [
    "e\u0301 vs \u00e9, a\u0308 vs \u00e4, n\u0303 vs \u00f1",  # decomposed vs precomposed
    "Z\u0351\u036b\u0343\u036a\u0302\u036b\u033d\u034f\u0334\u0319\u0324\u031e\u0349\u035a\u032f\u031e\u0320\u034dalgo text",
    "o\u0323\u0302 o\u0302\u0323 (different mark orders) A\u030a \u212b \u00c5 (angstrom)",
    "\u1100\u1161\u11a8 conjoining jamo \u1112\u1161\u11ab\u1100\u1173\u11af",
    "Devanagari क्षत्रिय with virama and ZWJ क्\u200dष",
    "\u0915\u093c \u0958 nukta forms; \u0061\u0328\u0301 ogonek+acute",
    "ﬁ ﬂ ﬀ ligatures, ² ³ ¹ superscripts, ½ ¼ fractions, Ⅻ ⅻ roman, ㎞ ㎏ squared",
    "\u0041\u030a\u0301 \u1e9b\u0323 \u0307\u0323 leading combining marks",
]

WHITESPACE = [
    "",
    " ",
    "  ",
    "\t",
    "\n",
    "\r\n",
    "\r",
    "   \n\n\n   ",
    "word   word    word     word",
    "trailing spaces   ",
    "   leading spaces",
    "tabs\there\t\tand\t\t\tthere",
    "line one\r\nline two\r\nline three\r\n",
    "mac\rline\rendings",
    "para one\n\n\npara two\n\n\n\n\n\npara three",
    "mixed \t \n \r\n \u00a0 \u3000 \u2028 \u2029 \u2003 \u200b whitespace",
    "\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n",
    " " * 40,
    "\t" * 40,
    "a" + " " * 33 + "b" + "\t" * 33 + "c" + "\n" * 33 + "d",
    "  \n  x  \n\n  y \t\n\t z",
    "end with newline\n",
    "    def indented():\n        return  42  \n",
]

CONTROL = [
    "null\x00byte",
    "bell\x07 backspace\x08 vt\x0b ff\x0c esc\x1b[31mred\x1b[0m",
    "".join(chr(c) for c in range(0, 32)),
    "del\x7f and c1 \x80\x85\x9f controls",
    "zero width: a\u200bb\u200cc\u200dd\u2060e\ufeffbom",
    "\ufeffstarts with BOM",
    "private use \ue000\uf8ff and specials \ufffc\ufffd",
    "noncharacters \ufdd0\ufffe\uffff \U0001fffe",
    "supplementary private \U000f0000\U0010fffd",
]

SPECIALS = [
    "<bos>",
    "<bos><bos>",
    "<eos>",
    "<pad><unk><mask>",
    "<start_of_turn>user\nWrite a poem about the sea.<end_of_turn>\n<start_of_turn>model\n",
    "<bos><start_of_turn>user\nHello<end_of_turn>\n<start_of_turn>model\nHi!<end_of_turn>\n",
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n",
    "<|endoftext|>",
    "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHello<|eot_id|>",
    "<think>\nreasoning here\n</think>\n\nanswer",
    "<tool_call>\n{\"name\": \"f\", \"arguments\": {}}\n</tool_call>",
    "<unused0><unused1> <unused99>",
    "[multimodal] <start_of_image><image_soft_token><end_of_image>",
    "<|turn>user\nhi<turn|>\n<|turn>model\n<|channel>thought\n<channel|>",
    "text<bos>glued<eos>text",
    "almost special: <bos <bos> > <<eos>> </bos> <BOS> < bos > <|im_start| |im_end|>",
    "▁▁▁ literal metaspace ▁ chars ▁▁",
    "<0x41><0xFF> literal byte tokens",
    "\n<start_of_turn>\n\n<end_of_turn>\n\n\n",
    "  <bos>  spaced  <eos>  ",
    "<table><tr><td>cell</td></tr></table>",
    "<h1>Title</h1><p>Paragraph with <b>bold</b> and <i>italic</i>.</p>",
]

UNUSUAL = [
    "𝕳𝖊𝖑𝖑𝖔 𝓦𝓸𝓻𝓵𝓭 𝟙𝟚𝟛 math alphanumerics",
    "Ｆｕｌｌｗｉｄｔｈ ｔｅｘｔ ａｎｄ　ｓｐａｃｅ！",
    "it'ſ long s, K kelvin, Å angstrom, Ω ohm, ﬆ st ligature",
    "Box drawing ┌─┬─┐ │ │ │ └─┴─┘ and braille ⠓⠑⠇⠇⠕",
    "Music 𝄞𝄢 and cuneiform 𒀀𒀁 and Linear B 𐀀𐀁 and gothic 𐌰𐌱",
    "Arrows ←↑→↓↔ math ∀x∈ℝ: x²≥0 ∑∫∂√∞≠≈≤≥ ⊂⊃∪∩",
    "Quotes: “double” ‘single’ «guillemets» „low“ ‚low‘ ‹single›",
    "Dashes: - ‐ ‒ – — ― and ellipsis … and bullets • ‣ ◦",
    "Apostrophes: it’s, it‘s, it`s, it´s, it's",
    "Digits: ٠١٢٣٤٥٦٧٨٩ ०१२३ ０１２３ ①②③ ⁰¹²³ 𝟎𝟏𝟐",
    "Numbers 1 12 123 1234 12345 123456 1234567 12345678 123456789",
    "Version v1.2.3-rc.4+build.567, IPv4 192.168.0.1, IPv6 fe80::1",
    "Hex 0xDEADBEEF, binary 0b1010, UUID 123e4567-e89b-12d3-a456-426614174000",
    "'s 't 're 've 'm 'll 'd 'S 'T 'RE 'VE 'M 'LL 'D 'x ''s '",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    "!!!!!!!!!!!!!!!!!!!!!!!!???????????........,,,,,,,,;;;;;;::::::-------______======",
    "a.b,c;d:e!f?g(h)i[j]k{l}m<n>o/p\\q|r`s~t@u#v$w%x^y&z*",
]

CODE = [
    '''def fibonacci(n: int) -> int:
    """Return the n-th Fibonacci number."""
    a, b = 0, 1
    for _ in range(n):
        a, b = b, a + b
    return a


if __name__ == "__main__":
    print([fibonacci(i) for i in range(10)])
''',
    '''#include <iostream>
#include <vector>

template <typename T>
T sum(const std::vector<T>& v) {
  T total{};
  for (const auto& x : v) total += x;
  return total;
}

int main() {
  std::vector<int> v{1, 2, 3};
  std::cout << sum(v) << "\\n";  // prints 6
  return 0;
}
''',
    '''fn main() {
    let words: Vec<&str> = "hello world".split_whitespace().collect();
    match words.len() {
        0 => println!("empty"),
        n => println!("{n} words: {:?}", words),
    }
}
''',
    '''const fetchData = async (url) => {
  try {
    const res = await fetch(url, { headers: { 'Accept': 'application/json' } });
    if (!res.ok) throw new Error(`HTTP ${res.status}`);
    return await res.json();
  } catch (err) {
    console.error(err);
  }
};
''',
    '''package main

import "fmt"

func main() {
\tch := make(chan int, 3)
\tgo func() { for i := 0; i < 3; i++ { ch <- i }; close(ch) }()
\tfor v := range ch {
\t\tfmt.Println(v)
\t}
}
''',
    '''SELECT u.id, u.name, COUNT(o.id) AS orders
FROM users u LEFT JOIN orders o ON o.user_id = u.id
WHERE u.created_at >= '2024-01-01'
GROUP BY u.id, u.name
HAVING COUNT(o.id) > 5
ORDER BY orders DESC;
''',
    '''{"name": "tandem", "version": "0.1.0", "tags": ["llm", "inference"], "nested": {"a": [1, 2.5, null, true, false], "b": "\\u00e9"}}''',
    '''#!/usr/bin/env bash
set -euo pipefail
for f in *.txt; do
  [[ -s "$f" ]] && wc -l "$f" | awk '{print $1}' >> counts.log
done
echo "done: $(date +%s)" 2>&1 | tee -a out.log
''',
    '''module Main where

main :: IO ()
main = mapM_ (putStrLn . fizz) [1..15]
  where fizz n | n `mod` 15 == 0 = "FizzBuzz"
               | n `mod` 3 == 0  = "Fizz"
               | otherwise       = show n
''',
    '''<!DOCTYPE html>
<html lang="en">
<head><meta charset="utf-8"><title>Test</title></head>
<body>
  <div class="container" id="main">&nbsp;&lt;tag&gt; &amp; &#x2603;</div>
</body>
</html>
''',
    '''\\begin{equation}
  \\int_{-\\infty}^{\\infty} e^{-x^2}\\,dx = \\sqrt{\\pi}
\\end{equation}
''',
    '''diff --git a/src/main.cc b/src/main.cc
@@ -1,3 +1,4 @@
-int x = 1;
+int x = 2;
+// comment with trailing spaces   
''',
    "x=1;y=2;z=x+y*3/4-5%6**7//8;if(x>=y&&y<=z||!a){b+=1;c-=2;d*=3;d/=4;}",
    "    \tmixed indentation\n\t    more\n        \t\tdeep",
]


def random_codepoint_text(rng, n):
    ranges = [(0x20, 0x7E), (0xA0, 0x24F), (0x370, 0x3FF), (0x400, 0x4FF), (0x590, 0x6FF), (0x900, 0x97F),
              (0xE00, 0xE7F), (0x1100, 0x11FF), (0x2000, 0x206F), (0x2100, 0x22FF), (0x3000, 0x30FF),
              (0x4E00, 0x9FFF), (0xAC00, 0xD7A3), (0xFF00, 0xFFEF), (0x1F300, 0x1F64F), (0x1D400, 0x1D7FF),
              (0x0300, 0x036F), (0x0, 0x1F)]
    out = []
    while len(out) < n:
        lo, hi = rng.choice(ranges)
        cp = rng.randint(lo, hi)
        if unicodedata.category(chr(cp)) in ("Cn", "Cs"):
            continue  # unassigned in this Unicode version: class tables may differ across versions
        out.append(chr(cp))
    return "".join(out)


def main():
    rng = random.Random(20240607)
    pools = PROSE + CJK + RTL + EMOJI + COMBINING + WHITESPACE + CONTROL + SPECIALS + UNUSUAL + CODE
    texts = list(pools)
    # Random mixtures of fragments, joined by assorted separators.
    seps = [" ", "\n", "", "  ", "\t", "\r\n", " \n ", "\n\n"]
    for _ in range(110):
        k = rng.randint(2, 5)
        parts = [rng.choice(pools) for _ in range(k)]
        if rng.random() < 0.5:
            parts = [p[: rng.randint(0, len(p))] for p in parts]
        texts.append("".join(p + rng.choice(seps) for p in parts))
    # Random code points.
    for _ in range(40):
        texts.append(random_codepoint_text(rng, rng.randint(1, 60)))
    # Repetitions.
    texts += ["a" * 1000, "ab" * 300, " " * 500, "\n" * 100, "🙂" * 100, "ー" * 200, "1" * 50,
              ("word " * 200).strip(), "▁" * 64, "<bos>" * 20]
    # One ~50 KB document.
    doc = []
    size = 0
    while size < 50_000:
        p = rng.choice(pools)
        doc.append(p)
        size += len(p.encode("utf-8")) + 2
        doc.append(rng.choice(["\n\n", "\n", " "]))
    texts.append("".join(doc))
    json.dump({"generator": "tools/gen_tokenizer_texts.py", "unicode_version": unicodedata.unidata_version,
               "texts": texts}, sys.stdout, ensure_ascii=True, indent=0)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
