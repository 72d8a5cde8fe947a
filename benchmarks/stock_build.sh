#!/usr/bin/env bash
# Build the stock CUDA kernels that official Vim runs on (causal-conv1d's forward and mamba-ssm's selective-scan
# forward) for one GPU architecture, for benchmarks/stock_vim.py. The GPU machine has no network: bring the sdists.
#
#   bash benchmarks/stock_build.sh SDIST_DIR [ARCH]      # ARCH: compute capability without the dot, default 90
#
# SDIST_DIR holds causal-conv1d 1.7.0 and mamba-ssm 2.3.2.post1 (unpacked folders or .tar.gz, from
# `MAMBA_SKIP_CUDA_BUILD=TRUE CAUSAL_CONV1D_SKIP_CUDA_BUILD=TRUE pip download --no-deps --no-build-isolation
# --no-binary :all: mamba-ssm==2.3.2.post1 causal-conv1d==1.7.0`) and, in SDIST_DIR/wheels, the build tools the
# machine lacks (ninja, packaging, wheel).
#
# The build runs in a copy under /tmp: the device tool replaces the working tree at every call, so a build inside
# it breaks when a later call arrives. Each setup.py is patched in the copy to compile one architecture, and the
# backward and decoding kernels (never called by the benchmark) are replaced by one small file of stubs that raise:
# six of mamba-ssm's nine CUDA files are backward kernels. The forward kernels are compiled as released.
# Installs into the active Python; prints the time taken. MAX_JOBS (default: all cores) sets the parallel jobs.
set -euo pipefail
src=$(cd "${1:?folder with the two sdists}" && pwd)
arch=${2:-90}
work=/tmp/ssmprune-stock
rm -rf "$work" && mkdir -p "$work"
if ls "$src"/wheels/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --target "$work/tools" "$src"/wheels/*.whl
    export PATH="$work/tools/bin:$PATH" PYTHONPATH="$work/tools${PYTHONPATH:+:$PYTHONPATH}"
fi
start=$(date +%s)
for name in causal_conv1d-1.7.0 mamba_ssm-2.3.2.post1; do
    if [ -d "$src/$name" ]; then cp -r "$src/$name" "$work/$name"
    else tar -C "$work" -xzf "$src/$name.tar.gz"; fi
    python3 - "$work/$name" "$arch" <<'EOF'
import re, sys
from pathlib import Path

root, arch = Path(sys.argv[1]), sys.argv[2]
setup = root / "setup.py"
text = setup.read_text()
anchor = "    # HACK: The compiler flag -D_GLIBCXX_USE_CXX11_ABI"
if anchor not in text:
    sys.exit(f"{setup}: anchor line not found; not the sdist this script knows")
one_arch = (f"    cc_flag = [f for f in cc_flag if f != '-gencode' and not f.startswith('arch=')]"
            f" + ['-gencode', 'arch=compute_{arch},code=sm_{arch}']\n")
text = text.replace(anchor, one_arch + anchor, 1)
if root.name.startswith("mamba_ssm"):
    folder, header = "csrc/selective_scan", '#include "selective_scan.h"\n#include "selective_scan_common.h"\n'
    dropped = [f for f in re.findall(r'"(csrc/selective_scan/selective_scan_bwd_[a-z0-9_]+\.cu)"', text)]
    stubs = [("selective_scan_bwd_cuda", "SSMParamsBwd", [(i, w) for i in ("float", "at::Half", "at::BFloat16")
                                                           for w in ("float", "complex_t")])]
else:
    folder, header = "csrc", '#include "causal_conv1d.h"\n'
    dropped = ["csrc/causal_conv1d_bwd.cu", "csrc/causal_conv1d_update.cu"]
    types = [(i, w) for i in ("float", "at::Half", "at::BFloat16") for w in ("float", "at::Half", "at::BFloat16")]
    stubs = [("causal_conv1d_bwd_cuda", "ConvParamsBwd", types),
             ("causal_conv1d_channellast_bwd_cuda", "ConvParamsBwd", types),
             ("causal_conv1d_update_cuda", "ConvParamsBase", types)]
if not dropped or any(f'"{f}"' not in text for f in dropped):
    sys.exit(f"{setup}: the backward sources are not where this script expects them")
lines = ["// ssmprune benchmark build: kernels the benchmark never calls, replaced by stubs that raise",
         "#include <cstdint>", "#include <cuda_runtime.h>", "#include <c10/util/BFloat16.h>",
         "#include <c10/util/Half.h>", "#include <c10/util/complex.h>", "#include <c10/util/Exception.h>", header, ""]
for fn, params, pairs in stubs:
    lines.append(f"template<typename I, typename W> void {fn}({params} &params, cudaStream_t stream) "
                 f'{{ TORCH_CHECK(false, "{fn} is not built (ssmprune benchmark build)"); }}')
    lines += [f"template void {fn}<{i}, {w}>({params} &params, cudaStream_t stream);" for i, w in pairs]
(root / folder / "ssmprune_stubs.cu").write_text("\n".join(lines) + "\n")
text = text.replace(f'"{dropped[0]}"', f'"{folder}/ssmprune_stubs.cu"', 1)
for f in dropped[1:]:
    text = re.sub(rf'\n\s*"{re.escape(f)}",', "", text, count=1)
setup.write_text(text)
print(f"{root.name}: sm_{arch} only; {len(dropped)} backward/decoding sources replaced by stubs")
EOF
    (cd "$work/$name" && MAMBA_FORCE_BUILD=TRUE CAUSAL_CONV1D_FORCE_BUILD=TRUE MAX_JOBS=${MAX_JOBS:-$(nproc)} \
        python3 -m pip install -q --no-build-isolation --no-deps .)
    echo "built $name in $(( $(date +%s) - start )) s"
done
python3 -c "import causal_conv1d_cuda, selective_scan_cuda; print('stock kernels importable')"
