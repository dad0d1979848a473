"""Smoke tests of the benchmark scripts (scripts/bench/): they run on the CPU at toy sizes and write
the JSON a GPU session will read. Speed is measured by the benchmarks themselves; these tests only
check that every figure is there and that the loss-equality check passes.

One run of ``gpu_suite.sh --smoke`` (train.py with --profile-steps and --ours-variant sides, gpu_profile.py
on every variant, the budget check skipping a part) is shared by most tests below; one run of two extra
parts named in SUITE_PARTS by two others."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "scripts" / "bench"
sys.path.insert(0, str(BENCH))

import benchlib  # noqa: E402 - after the path insert

ALLOCATOR_VARIABLES = ("PYTORCH_CUDA_ALLOC_CONF", "PYTORCH_ALLOC_CONF", "MTRAIN_SET_ALLOC_CONF")


def _smoke(out: Path, **env: str) -> subprocess.CompletedProcess:
    """gpu_suite.sh --smoke into ``out``, offline, with ``env`` added (SUITE_PARTS …) and no CUDA
    allocator setting inherited (the scripts set their own unless one is set)."""
    full = {
        **{k: v for k, v in os.environ.items() if k not in ALLOCATOR_VARIABLES},
        "PYTHON": sys.executable,
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        **env,
    }
    return subprocess.run(["bash", str(BENCH / "gpu_suite.sh"), "--smoke", str(out)], env=full, cwd=REPO,
                          capture_output=True, text=True, timeout=600, check=False)


@pytest.fixture(scope="module")
def suite(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess]:
    out = tmp_path_factory.mktemp("suite")
    return out, _smoke(out)


def _one(out: Path, pattern: str) -> dict:
    files = sorted(out.glob(pattern))
    assert len(files) == 1, f"{pattern}: {files}"
    return json.loads(files[0].read_text())


def test_suite_smoke_runs_every_part(suite):
    out, done = suite
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    status = json.loads((out / "suite.json").read_text())
    assert status["failed"] == []
    assert [p["part"] for p in status["parts"] if p["status"] == "ok"] == [
        "train-long",
        "profile-bert",
        "train-short",
        "batches",
        "profile-bert-cached",
        "train-long-noprobe",
        "train-long-noexpandable",
    ]  # the extra parts (compile, the two without cuDNN attention, decisions) run only when SUITE_PARTS names them
    assert status["skipped"] == ["profile-xlmr"]  # the smoke gives it no budget: the skip path is exercised
    assert "pip freeze" in (out / "env.txt").read_text()
    summary = (out / "summary.txt").read_text()
    assert "ours/theirs warm" in summary and "gpu_profile.py tiny batch 8" in summary
    assert "batches.py cpu words 4-40 batch 8" in summary


def test_batches_json_times_every_side_and_checks_the_batches_match(suite):
    """batches.py (the input pipeline alone): theirs, ours:rows and ours timed over one and two datasets,
    and ours' batches equal to the row reads' and to the model's own tokenization."""
    record = _one(suite[0], "batches-cpu-words4-40-b8-*.json")
    assert set(record["results"]) == {"1", "2"}
    for result in record["results"].values():
        assert set(result["ms_per_batch"]) == {"theirs", "ours:rows", "ours", "ours:texts"}
        assert all(ms > 0 for ms in result["ms_per_batch"].values())
        assert result["checks"] == {"ours_equals_ours_rows": True, "ours_texts_equals_theirs": True,
                                    "token_ids_equal_theirs": True}


def test_train_short_times_the_row_reads_variant(suite):
    record = _one(suite[0], "train-tiny-cpu-words2-10-short-*.json")
    assert "ours:rowfetch" in record["runs"], list(record["runs"])
    speed = record["runs"]["ours:rowfetch"][0]["speed"]
    assert speed["columnar_fetch"] is False and record["runs"]["ours"][0]["speed"]["columnar_fetch"] is True


LONG = "train-tiny-cpu-words4-40-long-2*.json"  # the date follows the label: not long-noexpandable's file


def test_train_json_first_warm_ratios_and_loss_equality(suite):
    out, _ = suite
    record = _one(out, LONG)
    assert record["loss_equality"]["passed"] is True
    packed = record["loss_equality"]["packed"]  # the packed forward against the plain one, fp32 and bf16
    assert packed["passed"] and packed["fp32"]["attention"] == "padded"  # varlen needs CUDA
    assert packed["fp32"]["grad_rel_diff"] <= 1e-4 and packed["bf16"]["bf16_noise"]["grad_rel_diff"] > 0
    for side in ("theirs", "ours"):
        assert len(record["runs"][side]) == 2
        assert [r["repeat"] for r in record["runs"][side]] == [0, 1]
        for which in ("first", "warm"):
            figures = record["summary"][side][which]
            for key in ("samples_per_s", "real_tokens_per_s", "pad_share", "median_step_s"):
                assert figures[key] is not None and figures[key] >= 0
        run = record["runs"][side][0]
        assert run["timed_steps"] == 1 and len(run["step_s"]) == 1
        assert run["encoder_calls_per_step"] > 0 and run["optimizer"]["class"]
    # --first ours, then alternating: repeat 0 ours first, repeat 1 theirs first
    assert record["runs"]["ours"][0]["position_in_process"] < record["runs"]["theirs"][0]["position_in_process"]
    assert record["runs"]["theirs"][1]["position_in_process"] < record["runs"]["ours"][1]["position_in_process"]
    for which in ("first", "warm"):
        assert record["ratios"][which]["samples_per_s"] > 0
    # each variant ran (once in the smoke, twice on a GPU), with its keys (both of workers'), beside theirs and
    # ours' two runs
    assert list(record["runs"]) == ["theirs", "ours", "ours:workers", "ours:compile", "ours:fusedloss"]
    assert record["variants_invalid"] == {} and record["variants_failed"] == {}
    assert record["settings"]["variant_repeats"] == 1
    for side in ("ours:workers", "ours:compile", "ours:fusedloss"):
        assert len(record["runs"][side]) == 1, side
        assert record["variant_ratios"][side]["first"]["samples_per_s"] > 0, side
    assert record["settings"]["ours_overrides"]["ours:workers"] == [
        ["training.dataloader_num_workers", 2],
        ["training.dataloader_prefetch_factor", 4],
    ]
    speed = {side: runs[0]["speed"] for side, runs in record["runs"].items() if side.startswith("ours")}
    assert speed["ours:workers"]["dataloader_num_workers"] == 2 and speed["ours"]["dataloader_num_workers"] == 0
    assert speed["ours:compile"]["compile_layers"] and not speed["ours"]["compile_layers"]
    assert speed["ours:fusedloss"]["fused_loss"] and not speed["ours"]["fused_loss"]
    # the allocator setting `mtrain run` uses, set by the script itself (the smoke's environment has none)
    assert record["settings"]["cuda_allocator"] == "expandable_segments:True"
    assert record["settings"]["cuda_allocator_set_by_bench"] is True


def test_noprobe_part_runs_ours_without_the_memory_probe(suite):
    record = _one(suite[0], "train-tiny-cpu-words4-40-long-noprobe-*.json")
    assert record["settings"]["ours_overrides"]["ours"] == [["training.memory_probe", False]]
    assert {side: len(runs) for side, runs in record["runs"].items()} == {"theirs": 1, "ours": 1}  # smoke: 1
    assert record["runs"]["ours"][0]["speed"]["memory_probe"] is False
    assert record["runs"]["ours"][0]["memory_probe"] is None  # no probe ran (its figures land here when one does)


def test_noexpandable_part_keeps_the_allocator_setting_it_was_given(suite):
    out, _ = suite
    record = _one(out, "train-tiny-cpu-words4-40-long-noexpandable-*.json")
    assert record["settings"]["cuda_allocator"] == "expandable_segments:False"  # from the environment, both sides
    assert record["settings"]["cuda_allocator_set_by_bench"] is False
    assert {side: len(runs) for side, runs in record["runs"].items()} == {"theirs": 1, "ours": 1}  # smoke: 1
    assert record["runs"]["ours"][0]["position_in_process"] == 0  # --first ours
    assert record["profile"] is None and record["complete"] is True  # --profile-steps 0: timed runs only


@pytest.fixture(scope="module")
def named_parts(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess]:
    """Two of the extra parts, named in SUITE_PARTS (in the other order than the suite's)."""
    out = tmp_path_factory.mktemp("named")
    return out, _smoke(out, SUITE_PARTS="profile-bert-nocudnn train-long-compile")


def test_suite_parts_runs_only_the_named_parts_and_restricts_attention_kernels(named_parts):
    tmp_path, done = named_parts
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    status = json.loads((tmp_path / "suite.json").read_text())
    assert [p["part"] for p in status["parts"]] == ["train-long-compile", "profile-bert-nocudnn"]  # suite order
    record = _one(tmp_path, "gpu-tiny-sdpa-nocudnn-*.json")
    assert record["settings"]["sdpa_enabled"] == {"flash": True, "efficient": True, "cudnn": False, "math": True}
    assert [r["variant"] for r in record["runs"]] == ["plain", "pad64"]
    assert "not in SUITE_PARTS" in done.stdout


def test_train_first_ours_goes_first(suite):
    out, _ = suite
    record = _one(out, "train-tiny-cpu-words2-10-short-*.json")
    assert record["runs"]["ours"][0]["position_in_process"] == 0  # --first ours
    assert record["runs"]["theirs"][0]["position_in_process"] == 1  # then alternating (variants in between)
    assert record["runs"]["theirs"][1]["position_in_process"] < record["runs"]["ours"][1]["position_in_process"]
    assert len(record["runs"]["ours:unmerged"]) == 1 and len(record["runs"]["ours:workers"]) == 1
    assert record["complete"] is True and record["failed"] == {}


def test_compiled_part_runs_the_compiled_variants_beside_ours_and_theirs(named_parts):
    out, _ = named_parts
    record = _one(out, "train-tiny-cpu-words4-40-compiled-*.json")
    assert record["complete"] is True and record["failed"] == {}
    for side in ("ours", "theirs", "ours:compile", "ours:paddedcompile", "ours:packedcompile"):
        assert len(record["runs"][side]) == 1, side
    assert record["variant_ratios"]["ours:compile"]["first"]["samples_per_s"] > 0
    speed = {side: record["runs"][side][0]["speed"] for side in record["runs"] if side.startswith("ours")}
    assert not speed["ours"]["compile_layers"] and speed["ours:compile"]["compile_layers"]
    assert speed["ours:packedcompile"]["compile_layers"] and speed["ours:packedcompile"]["packed_forward"]
    assert speed["ours:paddedcompile"]["compile_layers"] and not speed["ours:paddedcompile"]["packed_forward"]
    packed = record["runs"]["ours:packedcompile"][0]
    assert packed["padding"]["attention"] == "padded" and packed["pad_share"] == 0  # varlen needs CUDA


def test_train_profile_summary(suite):
    out, _ = suite
    record = _one(out, LONG)
    profiled = record["profile"]
    assert set(profiled) == {"theirs", "ours", "ours:workers", "ours:fusedloss"}  # --profile-sides
    for side, p in profiled.items():
        assert "profile_error" not in p, p.get("profile_error")
        assert p["steps"] == 1 and len(p["host_step_s"]) == 1
        assert p["aten_ops_per_step"] > p["top_level_aten_ops_per_step"] > 0
        assert p["top_level_aten_ops_by_name_per_step"]
        assert p["gemm_calls_per_step"] > 0 and p["distinct_gemm_shapes"] > 0
        assert p["distinct_gemm_shapes"] == sum(p["distinct_gemm_shapes_by_op"].values())
        for key in (
            "host_device_syncs_per_step",
            "sync_ops_per_step",
            "local_scalar_dense_per_step",
            "collate_s_per_step",
            "next_batch_wait_s_per_step",
        ):
            assert p[key] >= 0, key
        # one batch collated in the profiled step, timed by the wrapper; with workers, in their processes
        assert p["collate_calls"] == (0 if side == "ours:workers" else 1), side
        assert set(p["readbacks"]) >= {
            "per_step",
            "by_method_per_step",
            "top_callers",
            "optimizer_host_scalars_per_step",
        }


def test_gpu_profile_json(suite):
    out, _ = suite
    record = _one(out, "gpu-tiny-cpu-*.json")
    assert [r["variant"] for r in record["runs"]] == ["plain", "sorted", "sorted-gpu", "pad64", "sorted-gpu-pad64",
                                                      "packed", "packed-compile", "packed-merged"]
    for r in record["runs"]:
        assert r["real_tokens_per_s"] > 0 and r["mfu"] >= 0 and "peak_memory_gib" in r
        assert r["profile"]["distinct_gemm_shapes"] > 0 and "host_device_syncs_per_step" in r["profile"]
        assert r["vs_plain_real_tokens_per_s"] > 0
    chunking = {r["variant"]: r["chunking"] for r in record["runs"]}
    assert chunking["plain"] is None and chunking["pad64"] is None
    assert chunking["sorted-gpu"]["min_tokens"] == 16384 and chunking["sorted-gpu"]["min_tokens_passed_by"]
    assert chunking["sorted-gpu-pad64"]["min_tokens_passed_by"] == "install(round_to=)"
    pad64 = next(r for r in record["runs"] if r["variant"] == "pad64")
    plain = next(r for r in record["runs"] if r["variant"] == "plain")
    assert pad64["pad_share"] >= plain["pad_share"]  # wider batches, same real tokens
    packed = next(r for r in record["runs"] if r["variant"] == "packed")
    assert packed["pad_share"] == 0 and packed["packed"]["attention"] == "padded"  # varlen needs CUDA
    assert packed["packed"]["forwards_without_host_lengths"] == 0  # lengths from the host, as in `mtrain run`
    merged = next(r for r in record["runs"] if r["variant"] == "packed-merged")
    assert merged["encoder_calls_per_step"] == 1 and packed["encoder_calls_per_step"] == 2  # anchors apart
    compiled = next(r for r in record["runs"] if r["variant"] == "packed-compile")
    assert compiled["compiled_layers"] == 2 and packed["compiled_layers"] == 0  # the tiny model's 2 layers
    assert compiled["pad_share"] == 0 and compiled["packed"]["attention"] == "padded"
    probe = record["shape_probe"]
    assert len(probe["widths"]) == len(probe["first_pass_s"]) == len(probe["second_pass_s"]) == 4
    assert record["settings"]["cuda_allocator"] == "expandable_segments:True"
    assert all(r["forward_autocast"] is None for r in record["runs"])  # autocast stays off on the CPU


def test_gpu_profile_cached_json(suite):
    out, _ = suite
    cached = _one(out, "gpu-tiny-cached-smoke-cpu-*.json")
    assert cached["settings"]["batch"] == 12 and cached["settings"]["cached"] is True
    assert [r["variant"] for r in cached["runs"]] == ["pad64", "packed"]
    for r in cached["runs"]:
        assert r["cached_loss"] is True and r["forward_autocast"] is None
        # CachedMNRL: 3 columns x 3 mini-batches of 4, embedded without gradients and again with them
        # (plain MNRL: 2 calls a step)
        assert r["encoder_calls_per_step"] >= 9
        assert r["profile"]["distinct_gemm_shapes"] > 0
    packed = cached["runs"][1]
    assert packed["pad_share"] == 0 and packed["packed"]["forwards_without_host_lengths"] == 0


def test_autocast_forward_reaches_the_cached_losses_recompute(tmp_path):
    """CachedMNRL embeds each mini-batch again, with gradients, inside ``backward()``: outside the
    step's autocast block. The wrapper (accelerate's, in training) keeps that pass in autocast too."""
    import random

    import gpu_profile
    import torch
    from sentence_transformers.sentence_transformer import losses

    model = benchlib.build_model("tiny", tmp_path, "cpu", benchlib.MAX_POSITIONS, 0)
    seen = []  # (gradients on, autocast on) at each encoder call
    model[0].register_forward_hook(
        lambda *_: seen.append((torch.is_grad_enabled(), torch.is_autocast_enabled("cpu")))
    )
    gpu_profile.autocast_forward(model, "cpu", torch.bfloat16)
    loss = losses.CachedMultipleNegativesRankingLoss(model, mini_batch_size=2)
    rng = random.Random(0)
    features = [model.preprocess([benchlib.word_text(rng, 4, 20) for _ in range(4)]) for _ in range(2)]
    value = loss(features, None)  # no autocast block around it
    forward_calls = len(seen)
    value.backward()
    assert forward_calls and len(seen) > forward_calls  # the recompute ran in backward()
    assert all(autocast for _, autocast in seen)
    assert any(grad for grad, _ in seen[forward_calls:])
    assert model[0].auto_model.embeddings.word_embeddings.weight.grad is not None

    class Probe(torch.nn.Module):  # bf16 inside the forward, fp32 out of it, as accelerate gives them
        def __init__(self) -> None:
            super().__init__()
            self.linear, self.inner = torch.nn.Linear(4, 4), []

        def forward(self, x: torch.Tensor) -> dict:
            y = self.linear(x)
            self.inner.append(y.dtype)
            return {"y": y, "rows": x.shape[0]}

    probe = Probe()
    gpu_profile.autocast_forward(probe, "cpu", torch.bfloat16)
    out = probe(torch.randn(2, 4))
    assert probe.inner == [torch.bfloat16] and out["y"].dtype == torch.float32 and out["rows"] == 2


def test_summarize_profile_counts_syncs_shapes_and_data_time():
    """The profiler summary on a window whose contents are known."""
    import torch
    from torch.profiler import ProfilerActivity, profile, record_function

    a, b = torch.randn(8, 16), torch.randn(16, 4)
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        for _ in range(2):  # two "steps"
            with record_function("collate"):
                torch.ones(3).sum().item()  # host data: counted apart
            (a @ b).sum().item()
            torch.mm(a[:4], b).sum().item()
            bool(a.sum() > 0)
    s = benchlib.summarize_profile(prof, steps=2)
    assert s["local_scalar_dense_per_step"] == 3  # two item() and one bool() outside "collate"
    assert s["host_device_syncs_per_step"] == 3  # bool()'s aten::is_nonzero is not counted twice
    assert s["sync_ops_in_data_loading_per_step"] == {"aten::_local_scalar_dense": 1}
    assert s["distinct_gemm_shapes_by_op"]["aten::mm"] == 2  # (8x16, 16x4) and (4x16, 16x4)
    assert s["gemm_calls_by_op_per_step"]["aten::mm"] == 2
    assert s["collate_s_per_step_profiled"] > 0
    assert "kernels_per_step" not in s  # CPU only


def test_readback_tally_names_callers():
    import torch

    tally = benchlib.ReadbackTally("cpu", REPO)
    x = torch.arange(4)
    tally.start()
    try:
        x.tolist()
        x.sum().item()
        int(x[0])
    finally:
        tally.stop()
    assert "tolist" not in torch.Tensor.__dict__  # the methods are restored
    s = tally.summary(steps=1)
    assert s["by_method_per_step"] == {"__int__": 1.0, "item": 1.0, "tolist": 1.0}
    assert all("test_bench_scripts.py" in c["where"] for c in s["top_callers"])


def test_step_clock_and_flops():
    clock = benchlib.StepClock("cpu")
    clock.start()
    clock.mark()
    clock.stop()
    assert clock.steps == 2 and len(clock.step_seconds()) == 2 and clock.seconds >= 0
    assert benchlib.train_flops(10, 2, 4, real_tokens=3, sum_sq_lengths=5) == 6 * 10 * 3 + 12 * 2 * 4 * 5
    assert benchlib.matryoshka_dims(768) == [768, 512, 256, 128, 64]
    assert benchlib.matryoshka_dims(64) == [64, 32, 16, 8]


class _Event:
    """A stand-in for a kineto event (the CUDA branch of the summary cannot run on a CPU)."""

    def __init__(self, name, start, end, device="CPU", activity="cpu_op", shapes=()):
        self._v = (name, start, end, device, activity, list(shapes))

    def name(self):
        return self._v[0]

    def start_ns(self):
        return self._v[1]

    def end_ns(self):
        return self._v[2]

    def duration_ns(self):
        return self._v[2] - self._v[1]

    def device_type(self):
        return f"DeviceType.{self._v[3]}"

    def activity_type(self):
        return self._v[4]

    def start_thread_id(self):
        return 1

    def shapes(self):
        return self._v[5]


def test_summarize_profile_cuda_events():
    import types

    events = [
        _Event("aten::linear", 0, 10, shapes=[[4, 8], [8, 8], [8]]),
        _Event("aten::addmm", 1, 9, shapes=[[8], [4, 8], [8, 8]]),
        _Event("aten::item", 20, 30),
        _Event("aten::_local_scalar_dense", 21, 29),
        _Event("cudaLaunchKernel", 2, 3, activity="cuda_runtime"),
        _Event("cudaMemcpyAsync", 22, 23, activity="cuda_runtime"),
        _Event("cudaStreamSynchronize", 23, 28, activity="cuda_runtime"),
        _Event("cudaDeviceSynchronize", 40, 41, activity="cuda_runtime"),  # the window's own
        _Event("cudaMalloc", 4, 5, activity="cuda_runtime"),
        _Event("ampere_sgemm_64x64", 5, 1005, device="CUDA", activity="kernel"),
        _Event("Memcpy DtoH (Device -> Pageable)", 24, 25, device="CUDA", activity="gpu_memcpy"),
        _Event("collate", 50, 60, device="CUDA", activity="gpu_user_annotation"),
    ]
    prof = types.SimpleNamespace(
        profiler=types.SimpleNamespace(kineto_results=types.SimpleNamespace(events=lambda: events))
    )
    s = benchlib.summarize_profile(prof, steps=1, own_device_syncs=1)
    assert s["kernels_per_step"] == 1 and s["kernel_time_s_per_step"] == 1000 / 1e9
    assert s["memcpy_dtoh_per_step"] == 1 and s["kernel_launches_per_step"] == 1
    assert s["runtime_sync_calls_per_step"] == {"cudaStreamSynchronize": 1}
    assert s["host_device_syncs_per_step"] == 1 and s["local_scalar_dense_per_step"] == 1
    assert s["runtime_alloc_calls_per_step"] == {"cudaMalloc": 1}
    assert s["top_level_aten_ops_per_step"] == 2 and s["aten_ops_per_step"] == 4
    assert s["distinct_gemm_shapes"] == 2
    assert s["kernel_time_by_category_s_per_step"] == {"gemm": 1000 / 1e9} and s["gpu_busy_s_per_step"] == 1000 / 1e9
    assert s["top_kernels"] == [{"name": "ampere_sgemm_64x64", "category": "gemm", "calls_per_step": 1,
                                 "s_per_step": 1000 / 1e9}]


def test_kernel_categories_and_busy_time():
    names = {
        "void pytorch_flash::flash_bwd_dq_dk_dv_loop_seqk_parallel_kernel<Flash_bwd_kernel_traits<64>>": "attention",
        "sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x256x64_warpgroupsize2x1x1": "gemm",
        "nvjet_tst_192x192_64x4_2x1_v_bz_coopB_TNT": "gemm",
        "void at::native::vectorized_elementwise_kernel<4, at::native::GeluCUDAKernelImpl": "gelu",
        "void at::native::(anonymous namespace)::vectorized_layer_norm_kernel<c10::BFloat16, float>": "layer norm",
        "void at::native::(anonymous namespace)::fused_dropout_kernel_vec<c10::BFloat16, float>": "dropout / random",
        "void at::native::unrolled_elementwise_kernel<at::native::direct_copy_kernel_cuda": "copy / cast",
        "void at::native::vectorized_elementwise_kernel<4, at::native::CUDAFunctor_add<c10::BFloat16>>": "elementwise",
        "void at::native::reduce_kernel<512, 1, at::native::ReduceOp<float, at::native::MeanOps": "reduction",
        "void at::native::indexSelectLargeIndex<c10::BFloat16, long, unsigned int, 2, 2, -2>": "index / gather / cat",
        "triton_per_fused_add_native_layer_norm_0": "compiled (triton)",
        "void at::native::(anonymous namespace)::multi_tensor_apply_kernel<FusedAdamMathFunctor": "optimizer",
        "some_custom_kernel": "other",
    }
    for name, category in names.items():
        assert benchlib.kernel_category(name) == category, name
    overlapping = [_Event("a", 0, 10), _Event("b", 5, 20), _Event("c", 30, 40), _Event("d", 32, 35)]
    assert benchlib.busy_ns(overlapping) == 20 + 10 and benchlib.busy_ns([]) == 0
    summary = benchlib.kernel_breakdown(overlapping, steps=2, top=2)
    assert summary["gpu_busy_s_per_step"] == 15 / 1e9
    assert [k["name"] for k in summary["top_kernels"]] == ["b", "a"]


def test_gpu_profile_keeps_the_other_variants_when_one_fails(tmp_path, monkeypatch):
    """A variant that fails (a kernel missing on the GPU, out of memory) is recorded and the others'
    figures are still written; the script then exits non-zero so the suite marks the part."""
    import gpu_profile

    real = gpu_profile.profile_variant

    def failing(p, args, variant, *rest):
        if variant == "packed":
            raise RuntimeError("no varlen kernel in this build")
        return real(p, args, variant, *rest)

    monkeypatch.setattr(gpu_profile, "profile_variant", failing)
    monkeypatch.setenv("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:False")  # kept, and this process untouched
    monkeypatch.setattr(sys, "argv", ["gpu_profile.py", "--profile", "tiny", "--variants", "plain,packed",
                                      "--steps", "1", "--warmup", "1", "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match="failed variants"):
        gpu_profile.main()
    record = _one(tmp_path, "gpu-tiny-cpu-*.json")
    assert [r["variant"] for r in record["runs"]] == ["plain"]
    assert record["failed_variants"] == {"packed": "RuntimeError: no varlen kernel in this build"}
    assert record["settings"]["cuda_allocator"] == "expandable_segments:False"
    assert record["settings"]["cuda_allocator_set_by_bench"] is False


def test_batches_times_a_static_embeddings_pipeline_and_checks_its_ids(tmp_path):
    """--model static: a StaticEmbedding's batches (ids end to end with offsets), pre-tokenized and
    read by column, equal the row reads' and hold the ids sentence-transformers' own collator gives."""
    done = subprocess.run(
        [sys.executable, str(BENCH / "batches.py"), "--model", "static", "--words", "4", "40", "--batch", "8",
         "--batches", "4", "--repeats", "1", "--datasets", "1", "2", "--rows", "64", "--out", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=300, check=False,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"},
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    record = _one(tmp_path, "batches-cpu-static-words4-40-b8-*.json")
    for result in record["results"].values():
        assert result["checks"] == {"ours_equals_ours_rows": True, "ours_texts_equals_theirs": True,
                                    "token_ids_equal_theirs": True}
