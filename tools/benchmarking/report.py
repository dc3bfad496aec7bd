# Copyright (c) SemiDETR-D2 contributors. Licensed under the Apache License 2.0.
"""The benchmark's markdown report, rendered from the results (the same dict as the JSON file)."""
from typing import Dict

from .detectors import MATCHING_NOTES
from .harness import GOALS
from .semi import SCOPE_LABELS


def _fmt_memory(memory: Dict) -> str:
    text = f"{memory['peak_rss_mib'] / 1024:.2f} GiB (+{memory['peak_rss_increase_mib'] / 1024:.2f})"
    if "cuda_max_allocated_mib" in memory:
        text = f"{memory['cuda_max_allocated_mib'] / 1024:.2f} GiB CUDA; RSS " + text
    return text


def _met(flag: bool) -> str:
    return "met" if flag else "**missed**"


def render_markdown(results: Dict) -> str:
    env = results["environment"]
    lines = ["# SemiDETR-D2 speed and memory", ""]
    lines += [f"* Command: `{env['command']}`",
              f"* Machine: {env['device_name']}, {env['cpu_count']} cores, {env['memory_gib']} GiB; "
              f"{env['platform']}",
              f"* Software: Python {env['python']}, torch {env['torch']}, transformers "
              f"{env['transformers'] or 'not installed'}; {env['threads']} threads; device {env['device']}; "
              f"code {env['git_commit']}",
              f"* Date: {env['date_utc']}; load average (1/5/15 min) at start {env['load_start']}, "
              f"at end {env['load_end']}",
              ""]
    detector = results.get("detector")
    if detector:
        lines += ["## Detector: ours vs transformers' DeformableDetrForObjectDetection", ""]
        if results.get("detector_note"):
            lines += [f"_{results['detector_note']}._", ""]
        for size_name, size in detector.items():
            spec = size["config"]
            lines += [f"### {size_name}: {size['description']}", "",
                      "| Model | Train s/step | Train img/s | Train time ours/HF | Infer s/batch | Infer img/s "
                      "| Infer img/s ours/HF | Peak RSS train (+over baseline) | Peak RSS infer (+over baseline) "
                      "| Params (trainable) |",
                      "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- | --- |"]
            names = {"ours_deformable_detr": "ours Deformable DETR", "hf_deformable_detr": "transformers Deformable DETR",
                     "ours_dino": f"ours DINO (dn {spec['dn_number']})"}
            for label, entry in size["models"].items():
                train, infer = entry["train"], entry["infer"]
                lines.append(
                    f"| {names[label]} | {train['median_s']:.3f} | {train['images_per_s']:.2f} | "
                    f"{train.get('time_ratio_vs_hf', '-') if label != 'hf_deformable_detr' else '1'} | "
                    f"{infer['median_s']:.3f} | {infer['images_per_s']:.2f} | "
                    f"{infer.get('speedup_vs_hf', '-') if label != 'hf_deformable_detr' else '1'} | "
                    f"{_fmt_memory(train['memory'])} | {_fmt_memory(infer['memory'])} | "
                    f"{entry['info']['parameters_m']:.1f}M ({entry['info']['trainable_parameters_m']:.1f}M) |")
            goals = size.get("goals")
            if goals:
                lines += ["", f"Goals: training step ours/HF {goals['train_ratio']:.2f} <= {GOALS['train_ratio_max']} "
                              f"{_met(goals['train_ratio_met'])}; inference img/s ours/HF {goals['infer_speedup']:.2f} "
                              f">= {GOALS['infer_speedup_min']} {_met(goals['infer_speedup_met'])}."]
            n = next(iter(size["models"].values()))["train"]["n"]
            lines += ["", f"Median of {n} alternated steps per model after warm-up; images/s = batch / median.", ""]
        lines += ["Matching of the two implementations:", ""] + [f"* {note}" for note in MATCHING_NOTES] + [""]
    semi = results.get("semi")
    if semi:
        lines += ["## Semi-supervised step (CPU configs of configs/quick_schedules on the embedded shapes data)", "",
                  f"Student images per iteration: {semi['student_images']} for every run; weights: {semi['weights']}"
                  + (f"; overrides: `{' '.join(semi['opts'])}`" if semi["opts"] else "") + ".", "",
                  "| Run | Labeled + unlabeled (teacher) images | s/it median (min) | img/s | Time vs supervised "
                  "| Peak RSS (+over baseline) | Memory vs supervised | Pseudo labels/img | CQC boxes/img |",
                  "| --- | --- | ---: | ---: | ---: | --- | ---: | ---: | ---: |"]
        for label, entry in semi["runs"].items():
            info, metrics = entry["info"], entry["metrics"]
            lines.append(
                f"| {label}: {entry['description']} | {info['labeled_images']} + {info['unlabeled_images']} "
                f"({info['teacher_images']}) | {entry['median_s']:.3f} ({entry['min_s']:.3f}) | "
                f"{entry['images_per_s']:.2f} | {entry.get('time_ratio_vs_supervised', '-')} | "
                f"{_fmt_memory(entry['memory'])} | {entry.get('memory_ratio_vs_supervised', '-')} | "
                f"{metrics.get('pseudo/labels_per_image', '-')} | {metrics.get('cqc/boxes_per_image', '-')} |")
        n = next(iter(semi["runs"].values()))["n"]
        lines += ["", f"Median of {n} alternated iterations per run after warm-up (one iteration = hooks + "
                      "`run_step`, as in `Trainer.train`); image sizes vary per iteration (multi-scale "
                      "training), as in training.", ""]
        if semi.get("breakdown"):
            runs = list(semi["breakdown"])
            lines += ["### Profiled breakdown (exclusive ms per iteration and share of the iteration)", "",
                      "| Scope | " + " | ".join(runs) + " |", "| --- |" + " ---: |" * len(runs)]
            for scope in list(SCOPE_LABELS) + ["other"]:
                cells = []
                for run in runs:
                    row = semi["breakdown"][run]["scopes"].get(scope)
                    cells.append(f"{row['exclusive_ms']:.0f} ms ({100 * row['share']:.1f}%)" if row else "")
                if any(cells):
                    label = SCOPE_LABELS.get(scope, "other (hooks, loss weighting, metrics)")
                    lines.append(f"| {label} `{scope}` | " + " | ".join(cells) + " |")
            lines.append("| **iteration (profiled)** | " + " | ".join(
                f"{semi['breakdown'][r]['wall_ms_per_iter']:.0f} ms" for r in runs) + " |")
            lines.append("| **matching + assignment + pseudo labels + GMM** | " + " | ".join(
                f"{semi['breakdown'][r]['matching_ms']:.0f} ms ({100 * semi['breakdown'][r]['matching_share']:.1f}%)"
                for r in runs) + " |")
            iters = semi["breakdown"][runs[0]]["iterations"]
            lines += ["", f"torch.profiler over {iters} iteration(s) after the timed ones; exclusive = a scope's "
                          "time minus the scopes nested in it (the Hungarian matching and one-to-many assignment "
                          "run inside the student forward, CPM mining and the teacher decode inside the CQC "
                          "loss), so the column adds up to the iteration. The profiler slows the iteration down.", ""]
        goals = semi.get("goals")
        if goals:
            lines.append("Goals:")
            lines.append("")
            for label, goal in goals.items():
                parts = []
                if "time_ratio" in goal:
                    parts.append(f"time vs supervised {goal['time_ratio']:.2f} <= {GOALS['semi_ratio_max']} "
                                 f"{_met(goal['time_ratio_met'])}")
                    parts.append(f"peak memory vs supervised {goal['memory_ratio']:.2f} <= "
                                 f"{GOALS['semi_memory_ratio_max']} {_met(goal['memory_ratio_met'])}")
                if "matching_share" in goal:
                    parts.append(f"matching + assignment + pseudo labels + GMM {100 * goal['matching_share']:.1f}% "
                                 f"<= {100 * GOALS['matching_share_max']:.0f}% {_met(goal['matching_share_met'])}")
                lines.append(f"* {label}: " + "; ".join(parts) + ".")
            lines.append("")
    return "\n".join(lines) + "\n"
