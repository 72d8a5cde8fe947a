#!/usr/bin/env bash
# The GPU checks and timings, in one command (the GPU machine has no network: fvcore comes as wheels).
#
#   bash benchmarks/gpu_run.sh OUT_DIR [tests] [models] [base] [logits] [scan] [norm] [conv] [train] [trainbase]
#                                      [compile] [stages] [profile] [stock] [pack]
#
#   tests   the kernels' CUDA tests (compiled Triton, fast paths included); quick: the layout maps, the token
#           selection, the chunked scan and preloaded conv launches, the one-state scan and the A_log cache, the
#           channel-grouped conv, norm and projections, the inference graphs' weight casts
#   eager   Vim-S dense against pruned without CUDA graphs
#   models  benchmarks/models.py: dense against pruned, Vim-S / PlainMamba-L3 / GroupMamba-T, bf16, batch 128
#   base    the same cases with an older tree in .base/ (git archive of the commit to compare against; BASE=dir
#           names another), run after `models` in the same call, so both are timed on the same machine;
#           MODELS_ARGS / BASE_ARGS: extra arguments for each (e.g. "--repeats 10 --warmup 5")
#   scan / norm / conv   the kernel benchmarks
#   train   fine-tuning throughput, dense against pruned
#   trainbase  the same with the older tree in .base/, after `train` in the same call
#   compile the same comparison under torch.compile (`bench --compile`): every family's test variant, then
#           the full-size cases (COMPILE_CASES), batch 32 for latency and throughput (one compilation per model)
#   stages  dense and pruned models (STAGES_CASES, default Vim-S) with --stages: per-block times, profiler categories
#   logits  the same pruned models' logits from .base/ and from this tree (benchmarks/same_logits.py)
#   profile the kernels dense and pruned models spend their time in (benchmarks/kernel_profile.py, PROFILE_CASES,
#           default Vim-S and GroupMamba-T, at PROFILE_BATCH, default 128), then the host side of eager batch-1
#           Vim-S forwards
#   stock   build the stock kernels (benchmarks/stock_build.sh .stock, about 5 minutes with 16 jobs) and time Vim
#           on them against ssmprune's dense and pruned Vim (benchmarks/stock_vim.py); carry .stock
#   pack    everything under OUT into OUT/all.tgz (the device tool brings back only a few files per call)
#
# Every step writes its whole log under OUT as it runs, so a step stopped by a time limit keeps what it printed.
# Wheels: copy ../shared/wheels/h200/*.whl into .whl/ and carry .whl (and .base when comparing).
set -uo pipefail
out=${1:?output directory}; shift
mkdir -p "$out"
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv,noheader | tee "$out/gpu.txt"
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a "$out/gpu.txt"
cases=${CASES:-vim_small plainmamba_l3 groupmamba_tiny}
for step in "$@"; do
    case "$step" in
        tests) python3 -m pytest -o addopts=-ra -q --maxfail=5 tests/ops/test_token_scan.py tests/ops/test_token_scan_backward.py \
                   tests/ops/test_gather_conv.py tests/ops/test_fused_norm.py tests/ops/test_scan_triton.py \
                   tests/ops/test_layout_maps.py tests/ops/test_token_select.py tests/ops/test_token_scan_chunks.py \
                   tests/ops/test_gather_conv_preload.py 2>&1 \
                   | tee "$out/tests.txt" | tail -60 ;;
        quick) { python3 -m pytest -o addopts=-ra -q -x tests/ops/test_layout_maps.py tests/ops/test_token_select.py \
                   tests/ops/test_token_scan_chunks.py tests/ops/test_gather_conv_preload.py && \
                 python3 -m pytest -o addopts=-ra -q -x tests/ops/test_token_scan.py tests/ops/test_token_scan_backward.py \
                   -k "one_state or a_log or small_state or single_state or bf16" && \
                 python3 -m pytest -o addopts=-ra -q -x tests/ops/test_grouped_linear.py tests/ops/test_gather_conv.py \
                   tests/ops/test_fused_norm.py tests/ops/test_graphs.py -k "grouped or stacked or separate or graph or cast"; } \
                   2>&1 | tee "$out/tests.txt" \
                   | grep -E "passed|failed|rror" ;;
        eager) PYTHONPATH=$PWD:${PYTHONPATH:-} python3 benchmarks/models.py --cases vim_small --no-graphs \
                   --json "$out/eager.json" 2>&1 | tee "$out/eager.txt" | tail -2 ;;
        models) PYTHONPATH=$PWD:${PYTHONPATH:-} python3 benchmarks/models.py --cases $cases ${MODELS_ARGS:-} \
                   --json "$out/models.json" \
                   2>&1 | tee "$out/models.txt" | tail -4 ;;
        base) (cd "${BASE:-.base}" && PYTHONPATH=$PWD:${PYTHONPATH:-} python3 benchmarks/models.py --cases $cases \
                   ${BASE_ARGS:-} --json "$out/base.json" 2>&1 | tee "$out/base.txt" | grep -E "throughput ×") ;;
        logits) (cd .base && python3 ../benchmarks/same_logits.py run "$out/logits_base.pt" >/dev/null) && \
                python3 benchmarks/same_logits.py run "$out/logits_new.pt" >/dev/null && \
                python3 benchmarks/same_logits.py compare "$out/logits_base.pt" "$out/logits_new.pt" \
                   | tee "$out/logits.txt" | grep -E "bf16|largest" | sort -k4 -g | tail -4 ;;
        compile) PYTHONPATH=$PWD:${PYTHONPATH:-} python3 benchmarks/models.py --compile --batch 32 --latency-batch 32 \
                   --repeats 10 --warmup 3 --json "$out/compile.json" \
                   --cases ${COMPILE_CASES:-vim_test plainmamba_test groupmamba_test vmamba_test $cases} \
                   2>&1 | tee "$out/compile.txt" | tail -12 ;;
        stages) PYTHONPATH=$PWD:${PYTHONPATH:-} python3 benchmarks/models.py --cases ${STAGES_CASES:-vim_small} --stages \
                   --repeats 5 --warmup 3 \
                   --json "$out/stages.json" 2>&1 | tee "$out/stages.txt" | tail -40 ;;
        scan) python3 benchmarks/scan.py --shapes vim_s --dtypes bf16 --skip-reference --json "$out/scan.json" \
                   2>&1 | tail -4 ;;
        norm) python3 benchmarks/fused_norm.py --json "$out/norm.json" 2>&1 | tail -12 ;;
        conv) python3 benchmarks/gather_conv.py --json "$out/conv.json" 2>&1 | tail -16 ;;
        train) PYTHONPATH=$PWD:${PYTHONPATH:-} python3 benchmarks/train_speed.py --cases $cases --json "$out/train.json" \
                   2>&1 | tee "$out/train.txt" | tail -12 ;;
        trainbase) (cd .base && PYTHONPATH=$PWD:${PYTHONPATH:-} python3 benchmarks/train_speed.py --cases $cases \
                   --demo-images 0 --json "$out/train_base.json" 2>&1 | tail -4) ;;
        profile) PYTHONPATH=$PWD:${PYTHONPATH:-} python3 benchmarks/kernel_profile.py --batch ${PROFILE_BATCH:-128} \
                   --cases ${PROFILE_CASES:-vim_small groupmamba_tiny} --top 30 2>&1 | tee "$out/kernels.txt" \
                   | grep -E "total|_kernel" | head -20
                 PYTHONPATH=$PWD:${PYTHONPATH:-} python3 benchmarks/kernel_profile.py --cases vim_small --host \
                   --top 30 > "$out/host.txt" 2>&1; grep "host time" "$out/host.txt" ;;
        stock) bash benchmarks/stock_build.sh .stock 2>&1 | tee "$out/stock_build.txt" | grep -E "built|importable|rror" \
                   && PYTHONPATH=$PWD:${PYTHONPATH:-} python3 benchmarks/stock_vim.py 2>&1 | tee "$out/stock.txt" | tail -20 ;;
        pack) tar -C "$out" -czf /tmp/ssmprune_pack.tgz . && find "$out" -mindepth 1 -delete \
                   && mv /tmp/ssmprune_pack.tgz "$out/all.tgz" ;;
        *) echo "unknown step $step" >&2 ;;
    esac
done
