#!/usr/bin/env bash
# Build llama.cpp's server from the source vendored in the llama-cpp-python sdist on PyPI (sha256-pinned), into
# $PREFIX/bin: llama-server (the knowledge engine), llama-quantize (re-quantizes the shipped GGUF) and
# llama-batched-bench (the engine's own benchmark). Built for this CPU (GGML_NATIVE). About 6 minutes on 2 cores;
# skipped while $PREFIX/BUILD.json says the same source, flags and CPU.
#   PREFIX   where to install (default: .venv/llama.cpp)
set -euo pipefail
cd "$(dirname "$0")/.."

version=0.3.36
sdist=llama_cpp_python-$version.tar.gz
sha256=832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e
prefix=${PREFIX:-.venv/llama.cpp}
python=${PYTHON:-python3}  # the machine's: setup runs this while it builds .venv
flags=(-DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF -DGGML_NATIVE=ON -DGGML_BACKEND_DL=OFF -DLLAMA_OPENSSL=OFF
       -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_APP=OFF -DLLAMA_BUILD_UI=OFF
       -DLLAMA_USE_PREBUILT_UI=OFF)
targets=(llama-server llama-quantize llama-batched-bench)
# Intel AMX: ggml's AMX kernels (quantized types) die with "illegal instruction" at their first `tilezero` on the
# machines here that have it, so a native build leaves AMX out; F16 never uses it, and other CPUs are built as before.
# These are not in cmake_flags (the engine's identity): like -march=native, they only fit the build to the CPU.
isa=()
grep -qw amx_tile /proc/cpuinfo && isa=(-mno-amx-tile -mno-amx-int8 -mno-amx-bf16)
cpu=$(grep -m1 '^flags' /proc/cpuinfo | sha256sum | cut -c1-16)
wanted="$sha256 ${flags[*]} ${targets[*]} cpu:$cpu $(sha256sum "$0" | cut -c1-16)"

if [[ -f $prefix/BUILD.json ]] && "$python" -c 'import json,sys; sys.exit(json.load(open(sys.argv[1]))["key"] != sys.argv[2])' \
    "$prefix/BUILD.json" "$wanted"; then
    exit 0
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
started=$(date +%s)
echo "llama.cpp: fetching $sdist (sha256 ${sha256:0:12}...) from PyPI"
"$python" - "$work/$sdist" "$sdist" "$sha256" <<'EOF'
import hashlib, re, sys, urllib.request
target, name, want = sys.argv[1:]
page = urllib.request.urlopen("https://pypi.org/simple/llama-cpp-python/", timeout=60).read().decode()
url = re.search(r'href="([^"#]*/' + re.escape(name) + r')#', page).group(1)
digest = hashlib.sha256()
with urllib.request.urlopen(url, timeout=300) as response, open(target, "wb") as out:
    while chunk := response.read(1 << 20):
        digest.update(chunk)
        out.write(chunk)
if digest.hexdigest() != want:
    sys.exit(f"llama.cpp: {name} has sha256 {digest.hexdigest()}, expected {want}: refusing to build it")
EOF
tar -xzf "$work/$sdist" -C "$work" "llama_cpp_python-$version/vendor/llama.cpp"
source_dir=$work/llama_cpp_python-$version/vendor/llama.cpp

cmake=cmake
if ! command -v cmake >/dev/null; then  # from PyPI, into the scratch folder
    "$python" -m pip install --quiet --target "$work/tools" "cmake==4.4.4" "ninja==1.13.2"
    export PATH="$work/tools/bin:$PATH" PYTHONPATH="$work/tools"
fi
generator=()
command -v ninja >/dev/null && generator=(-G Ninja)
log=$work/build.log
echo "llama.cpp: building ${targets[*]} for this CPU (a few minutes; log kept in $prefix/build.log)"
if ! { "$cmake" -S "$source_dir" -B "$work/build" "${generator[@]}" "${flags[@]}" \
           -DCMAKE_C_FLAGS="${isa[*]}" -DCMAKE_CXX_FLAGS="${isa[*]}" &&
       "$cmake" --build "$work/build" -j "$(nproc)" --target "${targets[@]}"; } >"$log" 2>&1; then
    tail -20 "$log" >&2
    echo "llama.cpp: the build failed (full log above is the tail of $log)" >&2
    exit 1
fi
rm -rf "$prefix"
mkdir -p "$prefix/bin"
for target in "${targets[@]}"; do cp "$work/build/bin/$target" "$prefix/bin/"; done
cp "$log" "$prefix/build.log"
cp "$source_dir/LICENSE" "$prefix/LICENSE"
"$python" - "$prefix/BUILD.json" "$wanted" "$version" "$sha256" "$(("$(date +%s)" - started))" "${flags[*]}" "${isa[*]}" <<'EOF'
import json, subprocess, sys
path, key, version, sha256, seconds, flags, isa = sys.argv[1:]
server = str(__import__("pathlib").Path(path).parent / "bin" / "llama-server")
reported = subprocess.run([server, "--version"], capture_output=True, text=True)
build = next((line.split(":", 1)[1].strip() for line in (reported.stdout + reported.stderr).splitlines()
              if line.startswith("version")), "unknown")
json.dump({"key": key, "source": f"llama-cpp-python=={version} sdist (PyPI)", "sdist_sha256": sha256,
           "llama_cpp_build": build, "cmake_flags": flags, "isa_flags": isa, "build_seconds": int(seconds)},
          open(path, "w"), indent=2)
EOF
echo "llama.cpp: built in $(("$(date +%s)" - started))s into $prefix"
