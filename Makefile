# The two set-up commands of the README:
#   make serve   build, then serve the bundled default model (with speculation) on 127.0.0.1:8000
#   make test    build, then run every test (unit, backend-op, golden, e2e, bounded fuzzing)
BUILD ?= build
JOBS ?= $(shell nproc)
CMAKE_FLAGS ?=

.PHONY: deps build serve test test-unit test-e2e test-fuzz asan clean

deps:
	@bash scripts/install-deps.sh

build: deps
	@cmake -S . -B $(BUILD) -G Ninja $(CMAKE_FLAGS) >/dev/null
	@cmake --build $(BUILD) -j $(JOBS)

serve: build
	$(BUILD)/tandem serve

test-unit: build
	cd $(BUILD) && ctest --output-on-failure -j $(JOBS)

test-e2e: build
	bash tests/e2e/run.sh $(BUILD)/tandem

# Bounded libFuzzer runs (clang, ASan + UBSan) of the tokenizer loader, encoder and chat templates.
test-fuzz: deps
	bash tests/fuzz/run.sh 20 fuzz_tokenizer_load fuzz_tokenizer_encode fuzz_chat_template

test: test-unit test-e2e test-fuzz

# The whole unit suite under AddressSanitizer + UndefinedBehaviorSanitizer.
asan:
	$(MAKE) test-unit BUILD=build-asan CMAKE_FLAGS="-DTANDEM_SANITIZE=ON -DCMAKE_BUILD_TYPE=Debug"

clean:
	rm -rf $(BUILD) build-asan
