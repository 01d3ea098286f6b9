#!/usr/bin/env bash
# tests/run.sh - the whole test suite, from a fresh clone on a fresh Debian 12 machine:
# installs dependencies, builds with -Werror, checks formatting, runs the unit tests (also
# under valgrind), the integration tests on real Kafka/Redis/Dovecot, then everything again
# under AddressSanitizer + UndefinedBehaviorSanitizer, and a short run of each fuzz target.
#   MV_TEST_QUICK=1 skips the sanitizer pass and the fuzz smoke run.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
JOBS=$(nproc)
step() { printf '\n=== %s ===\n' "$*"; }

step "dependencies"
bash compose/local/install-deps.sh --tests

step "format check (clang-format)"
bad=$(git ls-files '*.c' '*.h' | xargs clang-format --dry-run -Werror 2>&1 | grep -c 'error:' || true)
if [ "$bad" != "0" ]; then
    git ls-files '*.c' '*.h' | xargs clang-format --dry-run -Werror 2>&1 | head -40
    echo "clang-format: $bad problems (run clang-format -i on the files above)"; exit 1
fi

step "Python venv for the independent clients (msgraph-sdk, exchangelib)"
if [ ! -x build/venv/bin/python ]; then python3 -m venv build/venv; fi
build/venv/bin/pip install -q -r tests/graphsim/requirements.txt -r tests/ewssim/requirements.txt \
    -r tests/integration/requirements.txt
PY=$ROOT/build/venv/bin/python

step "build (-Wall -Wextra -Werror)"
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DMV_WERROR=ON -DMV_PYTHON="$PY" >/dev/null
ninja -C build

step "unit + integration tests"
(cd build && ctest --output-on-failure -j1 --timeout 900)

step "unit tests under valgrind (leaks are errors)"
for t in build/tests/test_*; do
    [ -x "$t" ] || continue
    case "$t" in *test_state|*test_queue) continue ;; esac # need servers; run in ctest above
    valgrind -q --error-exitcode=99 --leak-check=full --errors-for-leak-kinds=definite,indirect \
        "$t" >/dev/null 2>build/valgrind-$(basename "$t").log ||
        { cat build/valgrind-$(basename "$t").log; echo "valgrind: $t failed"; exit 1; }
    echo "valgrind clean: $(basename "$t")"
done

if [ "${MV_TEST_QUICK:-0}" != "1" ]; then
    step "ASan + UBSan build and tests"
    CC=clang cmake -S . -B build-asan -G Ninja -DCMAKE_BUILD_TYPE=Debug -DMV_SANITIZE=ON \
        -DMV_WERROR=ON -DMV_PYTHON="$PY" >/dev/null
    ninja -C build-asan
    (cd build-asan && ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 \
        UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 ctest --output-on-failure -j1 --timeout 900)

    step "fuzz targets (short smoke run each)"
    CC=clang cmake -S . -B build-fuzz -G Ninja -DCMAKE_BUILD_TYPE=Debug -DMV_FUZZ=ON >/dev/null
    ninja -C build-fuzz $(cd tests/fuzz && ls fuzz_*.c | sed 's/\.c$//')
    for f in tests/fuzz/fuzz_*.c; do
        name=$(basename "$f" .c)
        corpus=tests/fuzz/corpus/${name#fuzz_}
        mkdir -p build-fuzz/corpus-$name
        build-fuzz/tests/$name -max_total_time=20 -max_len=65536 build-fuzz/corpus-$name \
            $( [ -d "$corpus" ] && echo "$corpus" ) 2>build-fuzz/$name.log ||
            { tail -50 build-fuzz/$name.log; echo "fuzz: $name found a crash"; exit 1; }
        echo "fuzz: $name $(grep -o 'Done [0-9]* runs' build-fuzz/$name.log | tail -1)"
    done
fi
step "all tests passed"
