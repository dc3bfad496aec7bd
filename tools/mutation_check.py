#!/usr/bin/env python
"""Mutation check of the test suite: plant one-line bugs, one at a time, and see whether the relevant tests
notice. Not part of CI (it runs the selected tests once per mutant).

    python tools/mutation_check.py                 # every mutant
    python tools/mutation_check.py --only ema_     # mutants whose name contains "ema_"
    python tools/mutation_check.py --only ema_,cpm # ... "ema_" or "cpm"
    python tools/mutation_check.py --list

Each mutant is (name, file, original line, mutated line, pytest selection). The tracked and untracked
(not ignored) files of the repository are copied to a temporary folder; the mutant is written into that
copy only, PYTHONPATH points at the copy's package, the selection runs there (the tests find the copy's
tools/ and configs/ through their own location), and the copy's file is restored afterwards. The real
files are never edited. A mutant whose original line is not found exactly once is reported as "n/a" (the
code moved on; update the list).

Result per mutant: "caught" (the selection failed), "SURVIVED" (it passed), "timeout" (counted as caught:
a hang is noticed), "n/a". A table is printed at the end and written to --report (Markdown).
"""
import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PKG = "projects/SemiDETR/semidetr/"
WIRING = "tests/test_semi_wiring.py"
RELIABILITY = "tests/test_reliability.py"
SWITCHES = "tests/test_switches.py"
STEP_DATA = "tests/test_semi_step_data.py"

# (name, file, original line (stripped; matched against stripped lines), mutated line, pytest selection)
MUTANTS = [
    # --- the semi-supervised step (engine/semi_trainer.py)
    ("step_drop_unsup_weight", PKG + "engine/semi_trainer.py",
     "loss_dict = {name: value * self.unsup_weight if name.startswith(UNSUP_PREFIX) else value",
     "loss_dict = {name: value if name.startswith(UNSUP_PREFIX) else value",
     [WIRING + "::test_unsup_loss_weight_scales_the_unsupervised_losses_only"]),
    ("step_denoise_off", PKG + "engine/semi_trainer.py",
     "denoise = stage in self.pseudo_label_denoising_stages", "denoise = False",
     [WIRING + "::test_stage_switches_exactly_at_t1_and_pseudo_label_denoising_follows_the_stage"]),
    ("step_denoise_inverted", PKG + "engine/semi_trainer.py",
     "denoise = stage in self.pseudo_label_denoising_stages",
     "denoise = stage not in self.pseudo_label_denoising_stages",
     [WIRING + "::test_stage_switches_exactly_at_t1_and_pseudo_label_denoising_follows_the_stage"]),
    ("step_labeled_always_stage_assignment", PKG + "engine/semi_trainer.py",
     "labeled_assignment = assignment if self.one_to_many_for_labeled else ONE_TO_ONE",
     "labeled_assignment = assignment",
     [WIRING + "::test_apply_to_labeled_false_keeps_labeled_images_one_to_one"]),
    ("step_unlabeled_always_one_to_one", PKG + "engine/semi_trainer.py",
     "assignment = stage", "assignment = ONE_TO_ONE",
     [WIRING + "::test_one_to_many_stage_changes_the_assignment_of_both_groups"]),
    ("step_empty_weight_for_every_image", PKG + "engine/semi_trainer.py",
     '"assignment": assignment, "class_loss_weight": 1.0 if len(labels) else self.empty_image_class_weight}',
     '"assignment": assignment, "class_loss_weight": self.empty_image_class_weight}',
     [WIRING + "::test_ignore_policy_leaves_images_with_pseudo_labels_alone_and_monitoring_never_reaches_a_loss"]),
    ("step_ignore_policy_dropped", PKG + "engine/semi_trainer.py",
     '"assignment": assignment, "class_loss_weight": 1.0 if len(labels) else self.empty_image_class_weight}',
     '"assignment": assignment, "class_loss_weight": 1.0}',
     ["tests/test_engine.py::test_semi_step_without_pseudo_labels"]),
    ("step_cqc_in_every_stage", PKG + "engine/semi_trainer.py",
     "consistency_on = self.consistency is not None and self.consistency.active(stage)",
     "consistency_on = self.consistency is not None",
     [WIRING + "::test_semidetr_run_with_pseudo_labels_trains_every_part"]),
    # --- the pseudo labeler (semi/pseudo_labels.py)
    ("pseudo_strict_threshold", PKG + "semi/pseudo_labels.py",
     "keep = predictions.scores >= self.score_threshold", "keep = predictions.scores > self.score_threshold",
     [WIRING + "::test_score_exactly_at_tau_s_is_a_pseudo_label"]),
    ("pseudo_nms_never", PKG + "engine/semi_trainer.py",
     "weak, return_encoded=True, nms_thresh=self.pseudo_nms_thresh, clip=self.clip_pseudo_boxes)",
     "weak, return_encoded=True, nms_thresh=0.0, clip=self.clip_pseudo_boxes)",
     [WIRING + "::test_pseudo_label_nms_removes_duplicates_of_the_same_teacher_output"]),
    ("pseudo_mapping_reversed", PKG + "data/geometry.py",
     "boxes, keep = map_boxes(instances.get(box_field).tensor, src_matrix, dst_matrix, dst_size, min_size)",
     "boxes, keep = map_boxes(instances.get(box_field).tensor, dst_matrix, src_matrix, dst_size, min_size)",
     ["tests/test_semi_components.py::test_pseudo_labels_score_filter_and_weak_to_strong_mapping"]),
    # --- CQC / CPM (semi/query_consistency.py, semi/cost_mining.py)
    ("cqc_keep_mask_ignored", PKG + "semi/query_consistency.py",
     "selected = _pad_mask(keep, student_hidden.shape[2], student_hidden.device)",
     "selected = _pad_mask([torch.ones_like(k) for k in keep], student_hidden.shape[2], student_hidden.device)",
     ["tests/test_fidelity_semi.py", "tests/test_semi_components.py", "tests/test_cost_mining.py"]),
    ("cpm_mean_std_without_std", PKG + "semi/cost_mining.py",
     "keep = (scores >= mean + std - _SCORE_TOLERANCE) & valid", "keep = (scores >= mean - _SCORE_TOLERANCE) & valid",
     ["tests/test_cost_mining.py"]),
    ("cpm_keep_above_threshold", PKG + "semi/cost_mining.py",
     "keep = [torch.from_numpy(cost <= threshold).to(device) for cost in local_costs]",
     "keep = [torch.from_numpy(cost >= threshold).to(device) for cost in local_costs]",
     ["tests/test_cost_mining.py"]),
    # --- the stage switch (engine/stage.py)
    ("stage_switch_one_late", PKG + "engine/stage.py",
     "return ONE_TO_MANY if iteration < self.one_to_many_iters else ONE_TO_ONE",
     "return ONE_TO_MANY if iteration <= self.one_to_many_iters else ONE_TO_ONE",
     [WIRING + "::test_stage_switches_exactly_at_t1_and_pseudo_label_denoising_follows_the_stage"]),
    ("stage_no_test_nms", PKG + "engine/stage.py",
     "return cfg.SEMIDETR.SHM.TEST_NMS_THRESH if stage == ONE_TO_MANY else cfg.MODEL.DETR.TEST_NMS_THRESH",
     "return cfg.MODEL.DETR.TEST_NMS_THRESH",
     [WIRING + "::test_checkpoint_of_a_run_ending_before_t1_predicts_with_nms"]),
    # --- the EMA teacher (semi/ema.py, engine/hooks.py, engine/trainer.py)
    ("ema_hook_ignores_warmup_switch", PKG + "engine/hooks.py",
     "self.updater.update(ema_decay(self.momentum, self.trainer.iter, self.warmup))",
     "self.updater.update(ema_decay(self.momentum, self.trainer.iter))",
     [WIRING + "::test_without_ema_warmup_the_teacher_keeps_momentum_from_the_first_step"]),
    ("ema_trainer_ignores_cfg_warmup", PKG + "engine/trainer.py",
     "return [EmaTeacherHook(self.ema, cfg.SEMI.EMA_MOMENTUM, cfg.SEMI.EMA_WARMUP)]",
     "return [EmaTeacherHook(self.ema, cfg.SEMI.EMA_MOMENTUM)]",
     [WIRING + "::test_without_ema_warmup_the_teacher_keeps_momentum_from_the_first_step"]),
    ("ema_updates_after_skipped_step", PKG + "engine/hooks.py",
     "if self.trainer.last_step_skipped:", "if False:",
     [RELIABILITY + "::test_nonfinite_steps_are_skipped_and_counted"]),
    ("ema_warmup_off_by_one", PKG + "semi/ema.py",
     "return min(momentum, 1.0 - 1.0 / (iteration + 1)) if warmup else momentum",
     "return min(momentum, 1.0 - 1.0 / (iteration + 2)) if warmup else momentum",
     ["tests/test_semi_components.py::test_ema_decay_schedule",
      WIRING + "::test_ema_warmup_makes_the_first_teacher_a_copy_of_the_student"]),
    ("ema_lerp_reversed", PKG + "semi/ema.py",
     "torch._foreach_lerp_(teacher, [s.detach() for s in student], 1.0 - decay)",
     "torch._foreach_lerp_(teacher, [s.detach() for s in student], decay)",
     ["tests/test_semi_components.py::test_ema_update_arithmetic"]),
    ("trainer_fixed_unsup_weight", PKG + "engine/trainer.py",
     "unsup_weight=cfg.SEMI.UNSUP_LOSS_WEIGHT,", "unsup_weight=4.0,",
     [WIRING + "::test_unsup_loss_weight_scales_the_unsupervised_losses_only"]),
    # --- the criterion (modeling/criterion.py)
    ("criterion_encoder_labels_not_binary", PKG + "modeling/criterion.py",
     "enc_labels = torch.zeros_like(labels)", "enc_labels = labels",
     ["tests/test_criterion.py::test_class_agnostic_encoder_loss_uses_binary_targets"]),
    ("criterion_image_weights_ignored", PKG + "modeling/criterion.py",
     "loss_class = weight_images(focal, image_weights).flatten(1).sum(1) / normalizer",
     "loss_class = focal.flatten(1).sum(1) / normalizer",
     ["tests/test_criterion.py::test_zero_image_weight_removes_an_image_without_targets"]),
    ("criterion_dn_targets_ignored", PKG + "modeling/criterion.py",
     "losses.update(self.denoising_losses(outputs, targets if dn_targets is None else dn_targets, denoising,",
     "losses.update(self.denoising_losses(outputs, targets, denoising,",
     ["tests/test_criterion.py", WIRING + "::test_stage_switches_exactly_at_t1_and_pseudo_label_denoising_follows_the_stage"]),
    # --- resume (tools/train_net.py, engine/trainer.py)
    ("resume_ignored", "tools/train_net.py",
     "trainer.resume_or_load(resume=args.resume)", "trainer.resume_or_load(resume=False)",
     [RELIABILITY + "::test_sigkill_then_resume_equals_uninterrupted_run"]),
    ("resume_data_from_start", PKG + "engine/trainer.py",
     "self._trainer.data_loader.start_at(self.start_iter)", "self._trainer.data_loader.start_at(0)",
     [RELIABILITY + "::test_sigkill_then_resume_equals_uninterrupted_run"]),
    # --- distributed decisions (engine/train_loop.py, modeling/criterion.py)
    ("ddp_skip_decision_local", PKG + "engine/train_loop.py",
     "dist.all_reduce(finite, op=dist.ReduceOp.MIN)", "pass",
     [RELIABILITY + "::test_nonfinite_loss_on_one_process_skips_the_step_on_every_process"]),
    ("ddp_target_count_local", PKG + "modeling/criterion.py",
     "dist.all_reduce(total)", "pass",
     ["tests/test_distributed_collectives.py"]),
]


MUTANTS += [
    # --- the semi-supervised step's data metrics and images without pseudo labels (engine/semi_trainer.py)
    ("step_data_metrics_labeled_only", PKG + "engine/semi_trainer.py",
     "self.mapper_stats.update(labeled + unlabeled)", "self.mapper_stats.update(labeled)",
     [STEP_DATA + "::test_semi_step_logs_the_unlabeled_streams_skipped_images_as_data_metrics"]),
    ("step_data_metrics_dropped", PKG + "engine/semi_trainer.py",
     "metrics = {**step_metrics(pseudo, strong, candidates, selection), **self.data_metrics()}",
     "metrics = {**step_metrics(pseudo, strong, candidates, selection)}",
     [STEP_DATA + "::test_semi_step_logs_the_unlabeled_streams_skipped_images_as_data_metrics"]),
    ("step_ignore_policy_dropped_mixed_batch", PKG + "engine/semi_trainer.py",
     '"assignment": assignment, "class_loss_weight": 1.0 if len(labels) else self.empty_image_class_weight}',
     '"assignment": assignment, "class_loss_weight": 1.0}',
     [STEP_DATA + "::test_image_without_pseudo_labels_is_background_or_left_out_of_the_unsupervised_loss"]),
    ("step_empty_weight_for_every_image_mixed_batch", PKG + "engine/semi_trainer.py",
     '"assignment": assignment, "class_loss_weight": 1.0 if len(labels) else self.empty_image_class_weight}',
     '"assignment": assignment, "class_loss_weight": self.empty_image_class_weight}',
     [STEP_DATA + "::test_image_without_pseudo_labels_is_background_or_left_out_of_the_unsupervised_loss"]),
    ("step_policies_swapped", PKG + "semi/pseudo_labels.py",
     'IMAGES_WITHOUT_PSEUDO_LABELS = {"background": 1.0, "ignore": 0.0}',
     'IMAGES_WITHOUT_PSEUDO_LABELS = {"background": 0.0, "ignore": 1.0}',
     [STEP_DATA + "::test_image_without_pseudo_labels_is_background_or_left_out_of_the_unsupervised_loss"]),
    # --- the pseudo-label rule's switches (engine/trainer.py, engine/semi_trainer.py, semi/pseudo_labels.py)
    ("trainer_ignores_mean_std_floor", PKG + "engine/trainer.py",
     "return PseudoLabeler(cfg.SEMI.PSEUDO_SCORE_THRESH, cfg.INPUT.AUG.MIN_BOX_SIZE, cfg.SEMI.PSEUDO_MEAN_STD_FLOOR)",
     "return PseudoLabeler(cfg.SEMI.PSEUDO_SCORE_THRESH, cfg.INPUT.AUG.MIN_BOX_SIZE)",
     [SWITCHES + "::test_mean_std_floor_keeps_only_the_detections_above_their_images_mean_plus_std"]),
    ("pseudo_floor_without_std", PKG + "semi/pseudo_labels.py",
     "keep &= mean_std_candidates(predictions.scores)", "keep &= predictions.scores >= predictions.scores.mean()",
     [SWITCHES + "::test_mean_std_floor_keeps_only_the_detections_above_their_images_mean_plus_std"]),
    ("trainer_always_clips_pseudo_boxes", PKG + "engine/trainer.py",
     "clip_pseudo_boxes=cfg.SEMI.PSEUDO_CLIP_BOXES,", "clip_pseudo_boxes=True,",
     [SWITCHES + "::test_clip_boxes_clips_the_teachers_boxes_to_the_weak_view"]),
    ("step_never_clips_pseudo_boxes", PKG + "engine/semi_trainer.py",
     "weak, return_encoded=True, nms_thresh=self.pseudo_nms_thresh, clip=self.clip_pseudo_boxes)",
     "weak, return_encoded=True, nms_thresh=self.pseudo_nms_thresh, clip=False)",
     [SWITCHES + "::test_clip_boxes_clips_the_teachers_boxes_to_the_weak_view"]),
    # --- CPM's keys (engine/trainer.py build_cross_view_consistency)
    ("trainer_cpm_method_fixed", PKG + "engine/trainer.py",
     "miner = PseudoLabelMiner(cpm.METHOD, score_threshold=cpm.SCORE_THRESH, topk=cpm.TOPK, cost_class=cpm.COST_CLASS,",
     'miner = PseudoLabelMiner("gmm", score_threshold=cpm.SCORE_THRESH, topk=cpm.TOPK, cost_class=cpm.COST_CLASS,',
     [SWITCHES + "::test_cpm_method_topk_and_score_thresh_choose_the_cqc_candidates"]),
    ("trainer_cpm_score_thresh_fixed", PKG + "engine/trainer.py",
     "miner = PseudoLabelMiner(cpm.METHOD, score_threshold=cpm.SCORE_THRESH, topk=cpm.TOPK, cost_class=cpm.COST_CLASS,",
     "miner = PseudoLabelMiner(cpm.METHOD, score_threshold=0.4, topk=cpm.TOPK, cost_class=cpm.COST_CLASS,",
     [SWITCHES + "::test_cpm_method_topk_and_score_thresh_choose_the_cqc_candidates"]),
    ("trainer_cpm_topk_fixed", PKG + "engine/trainer.py",
     "miner = PseudoLabelMiner(cpm.METHOD, score_threshold=cpm.SCORE_THRESH, topk=cpm.TOPK, cost_class=cpm.COST_CLASS,",
     "miner = PseudoLabelMiner(cpm.METHOD, score_threshold=cpm.SCORE_THRESH, topk=9, cost_class=cpm.COST_CLASS,",
     [SWITCHES + "::test_cpm_method_topk_and_score_thresh_choose_the_cqc_candidates"]),
    ("trainer_cpm_cost_class_fixed", PKG + "engine/trainer.py",
     "miner = PseudoLabelMiner(cpm.METHOD, score_threshold=cpm.SCORE_THRESH, topk=cpm.TOPK, cost_class=cpm.COST_CLASS,",
     "miner = PseudoLabelMiner(cpm.METHOD, score_threshold=cpm.SCORE_THRESH, topk=cpm.TOPK, cost_class=2.0,",
     [SWITCHES + "::test_cpm_cost_weights_weigh_the_matching_cost"]),
    ("trainer_cpm_cost_giou_fixed", PKG + "engine/trainer.py",
     "cost_giou=cpm.COST_GIOU, cost_bbox=cpm.COST_BBOX, focal_alpha=cfg.MODEL.DETR.FOCAL_ALPHA,",
     "cost_giou=2.0, cost_bbox=cpm.COST_BBOX, focal_alpha=cfg.MODEL.DETR.FOCAL_ALPHA,",
     [SWITCHES + "::test_cpm_cost_weights_weigh_the_matching_cost"]),
    ("trainer_cpm_cost_bbox_fixed", PKG + "engine/trainer.py",
     "cost_giou=cpm.COST_GIOU, cost_bbox=cpm.COST_BBOX, focal_alpha=cfg.MODEL.DETR.FOCAL_ALPHA,",
     "cost_giou=cpm.COST_GIOU, cost_bbox=5.0, focal_alpha=cfg.MODEL.DETR.FOCAL_ALPHA,",
     [SWITCHES + "::test_cpm_cost_weights_weigh_the_matching_cost"]),
    # --- CQC's keys (engine/trainer.py, modeling/cross_view.py resolve_cqc, modeling/detector.py)
    ("trainer_cqc_structure_fixed", PKG + "engine/trainer.py",
     'miner, structure=settings["structure"], loss=settings["loss"], loss_weight=settings["loss_weight"],',
     'miner, structure="official", loss=settings["loss"], loss_weight=settings["loss_weight"],',
     [SWITCHES + "::test_variant_decides_what_the_student_decodes_and_grad_through_teacher_what_trains_its_projector"]),
    ("trainer_cqc_loss_fixed", PKG + "engine/trainer.py",
     'miner, structure=settings["structure"], loss=settings["loss"], loss_weight=settings["loss_weight"],',
     'miner, structure=settings["structure"], loss="cosine", loss_weight=settings["loss_weight"],',
     [SWITCHES + "::test_paper_variant_is_not_scaled_by_w_u_and_its_loss_key_picks_the_form"]),
    ("trainer_cqc_loss_weight_fixed", PKG + "engine/trainer.py",
     'miner, structure=settings["structure"], loss=settings["loss"], loss_weight=settings["loss_weight"],',
     'miner, structure=settings["structure"], loss=settings["loss"], loss_weight=10.0,',
     [SWITCHES + "::test_cqc_loss_weight_and_the_official_unsupervised_weight_scale_the_consistency_loss"]),
    ("trainer_cqc_grad_through_teacher_fixed", PKG + "engine/trainer.py",
     'stages=settings["stages"], grad_through_teacher=cqc.GRAD_THROUGH_TEACHER,',
     'stages=settings["stages"], grad_through_teacher=True,',
     [SWITCHES + "::test_variant_decides_what_the_student_decodes_and_grad_through_teacher_what_trains_its_projector"]),
    ("trainer_cqc_candidates_fixed", PKG + "engine/trainer.py",
     'min_box_size=cfg.INPUT.AUG.MIN_BOX_SIZE, candidates=settings["candidates"],',
     'min_box_size=cfg.INPUT.AUG.MIN_BOX_SIZE, candidates="mined_or_score",',
     [SWITCHES + "::test_cqc_candidates_mined_or_score_adds_the_boxes_at_or_above_tau_s"]),
    ("trainer_cqc_always_scaled_by_w_u", PKG + "engine/trainer.py",
     'score_threshold=cfg.SEMI.PSEUDO_SCORE_THRESH, scale_by_unsup_weight=settings["scale_by_unsup_weight"])',
     'score_threshold=cfg.SEMI.PSEUDO_SCORE_THRESH, scale_by_unsup_weight=True)',
     [SWITCHES + "::test_paper_variant_is_not_scaled_by_w_u_and_its_loss_key_picks_the_form"]),
    ("trainer_cqc_candidate_tau_fixed", PKG + "engine/trainer.py",
     'score_threshold=cfg.SEMI.PSEUDO_SCORE_THRESH, scale_by_unsup_weight=settings["scale_by_unsup_weight"])',
     'score_threshold=0.4, scale_by_unsup_weight=settings["scale_by_unsup_weight"])',
     [SWITCHES + "::test_cqc_candidates_mined_or_score_adds_the_boxes_at_or_above_tau_s"]),
    ("cqc_candidates_strictly_above_tau", PKG + "semi/query_consistency.py",
     "keep = [k | (s >= self.score_threshold) for k, s in zip(keep, candidates.scores)]",
     "keep = [k | (s > self.score_threshold) for k, s in zip(keep, candidates.scores)]",
     [SWITCHES + "::test_cqc_candidate_scoring_exactly_tau_s_joins_the_official_candidates"]),
    ("trainer_cqc_stages_fixed", PKG + "engine/trainer.py",
     'stages=settings["stages"], grad_through_teacher=cqc.GRAD_THROUGH_TEACHER,',
     'stages=("one_to_many",), grad_through_teacher=cqc.GRAD_THROUGH_TEACHER,',
     [SWITCHES + "::test_cqc_stages_decide_in_which_stage_the_consistency_loss_is_trained"]),
    ("resolve_cqc_ignores_stages", PKG + "modeling/cross_view.py",
     'resolved["stages"] = tuple(cqc.STAGES)', "pass",
     [SWITCHES + "::test_cqc_stages_decide_in_which_stage_the_consistency_loss_is_trained"]),
    ("resolve_cqc_ignores_loss_weight", PKG + "modeling/cross_view.py",
     'resolved["loss_weight"] = float(cqc.LOSS_WEIGHT)', "pass",
     [SWITCHES + "::test_cqc_loss_weight_and_the_official_unsupervised_weight_scale_the_consistency_loss"]),
    ("resolve_cqc_ignores_loss", PKG + "modeling/cross_view.py",
     'resolved["loss"] = cqc.LOSS', "pass",
     [SWITCHES + "::test_paper_variant_is_not_scaled_by_w_u_and_its_loss_key_picks_the_form"]),
    ("resolve_cqc_ignores_candidates", PKG + "modeling/cross_view.py",
     'resolved["candidates"] = cqc.CANDIDATES', "pass",
     [SWITCHES + "::test_cqc_candidates_mined_or_score_adds_the_boxes_at_or_above_tau_s"]),
    ("resolve_cqc_ignores_projector", PKG + "modeling/cross_view.py",
     'resolved["projector"] = cqc.PROJECTOR', "pass",
     [SWITCHES + "::test_roi_size_and_projector_shape_the_cross_view_embedding"]),
    ("detector_roi_size_fixed", PKG + "modeling/detector.py",
     '"cross_view_roi_size": cfg.SEMIDETR.CQC.ROI_SIZE if cfg.SEMIDETR.CQC.ENABLED else 0,',
     '"cross_view_roi_size": 7 if cfg.SEMIDETR.CQC.ENABLED else 0,',
     [SWITCHES + "::test_roi_size_and_projector_shape_the_cross_view_embedding"]),
    # --- the warning of a run that ends before T1 (engine/config_checks.py)
    ("config_warns_only_beyond_max_iter", PKG + "engine/config_checks.py",
     "if shm.ENABLED and shm.O2M_ITERS >= cfg.SOLVER.MAX_ITER:",
     "if shm.ENABLED and shm.O2M_ITERS > cfg.SOLVER.MAX_ITER:",
     [SWITCHES + "::test_one_to_many_warning_when_t1_is_exactly_max_iter"]),
    # --- the pseudo-label rule of tools/pseudo_label_quality.py
    ("quality_tool_without_pseudo_nms", "tools/pseudo_label_quality.py",
     "detections = model.predict([inputs], nms_thresh=cfg.SEMI.PSEUDO_NMS_THRESH, clip=cfg.SEMI.PSEUDO_CLIP_BOXES)[0]",
     "detections = model.predict([inputs], clip=cfg.SEMI.PSEUDO_CLIP_BOXES)[0]",
     ["tests/test_pseudo_label_quality.py"]),
    ("quality_tool_without_mean_std_floor", "tools/pseudo_label_quality.py",
     "kept = PseudoLabeler(lowest_threshold, mean_std_floor=cfg.SEMI.PSEUDO_MEAN_STD_FLOOR).filter(detections)",
     "kept = PseudoLabeler(lowest_threshold).filter(detections)",
     ["tests/test_pseudo_label_quality.py"]),
    # --- the evidence report of tools/run_ssod_benchmarks.py
    ("bench_plateau_by_end_points", "tools/run_ssod_benchmarks.py",
     "slope = linear_regression(*zip(*quarter)).slope",
     "slope = (quarter[-1][1] - quarter[0][1]) / (quarter[-1][0] - quarter[0][0])",
     ["tests/test_ssod_benchmark_script.py"]),
    ("bench_gap_share_over_all_sup_only_seeds", "tools/run_ssod_benchmarks.py",
     "closed = (mean(run_values) - mean(sup_values)) / (ceiling - mean(sup_values))",
     "closed = (mean(run_values) - sup) / (ceiling - sup)",
     ["tests/test_ssod_benchmark_script.py"]),
    ("bench_precision_unweighted", "tools/run_ssod_benchmarks.py",
     "if key in PER_LABEL_METRICS:", "if False:",
     ["tests/test_ssod_benchmark_script.py"]),
    ("bench_rows_without_curve", "tools/run_ssod_benchmarks.py",
     "[*common, *curve, *weights, *split, *row_overrides(row, args)], threads)",
     "[*common, *weights, *split, *row_overrides(row, args)], threads)",
     ["tests/test_ssod_benchmark_script.py"]),
    ("bench_archive_not_read", "tools/run_ssod_benchmarks.py",
     "        return archived\n", "        return None\n",
     ["tests/test_ssod_benchmark_script.py"]),
    ("bench_archived_only_at_the_end", "tools/run_ssod_benchmarks.py",
     "        archived_summary(out_dir, args)\n", "",
     ["tests/test_ssod_benchmark_script.py"]),
]


def _copy_repo(destination: str) -> None:
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, check=True,
                           stdout=subprocess.PIPE, text=True).stdout.split("\n")
    for relative in filter(None, files):
        source = os.path.join(ROOT, relative)
        if relative == ".venv" or relative.startswith(".venv/") or not os.path.isfile(source):
            continue
        target = os.path.join(destination, relative)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        shutil.copy2(source, target)
    os.symlink(os.path.realpath(os.path.join(ROOT, ".venv")), os.path.join(destination, ".venv"))


def _mutate(text: str, original: str, mutated: str):
    lines = text.split("\n")
    hits = [i for i, line in enumerate(lines) if line.strip() == original.strip()]
    if len(hits) != 1:
        return None
    line = lines[hits[0]]
    lines[hits[0]] = line[: len(line) - len(line.lstrip())] + mutated.strip()
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default="", help="run the mutants whose name contains this (several: comma-separated)")
    parser.add_argument("--list", action="store_true")
    parser.add_argument("--timeout", type=float, default=1200.0, help="seconds per mutant")
    parser.add_argument("--report", default="", help="write the Markdown table here")
    args = parser.parse_args()
    wanted = args.only.split(",")
    mutants = [m for m in MUTANTS if any(part in m[0] for part in wanted)]
    if args.list:
        for name, path, *_ in mutants:
            print(f"{name:40s} {path}")
        return 0
    python = os.path.join(ROOT, ".venv", "bin", "python")
    rows = []
    with tempfile.TemporaryDirectory(prefix="semidetr_mutants_") as copy:
        _copy_repo(copy)
        env = {**os.environ, "PYTHONPATH": os.path.join(copy, "projects", "SemiDETR")}
        probe = subprocess.run([python, "-c", "import semidetr; print(semidetr.__file__)"], cwd=copy, env=env,
                               stdout=subprocess.PIPE, text=True, check=True).stdout.strip()
        assert probe.startswith(copy), f"the copy is not the package imported: {probe}"
        for name, path, original, mutated, selection in mutants:
            target = os.path.join(copy, path)
            text = open(target).read()
            planted = _mutate(text, original, mutated)
            if planted is None:
                rows.append((name, path, "n/a", 0.0, "original line not found exactly once"))
                print(f"{name}: n/a", flush=True)
                continue
            open(target, "w").write(planted)
            start = time.time()
            try:
                result = subprocess.run([python, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *selection],
                                        cwd=copy, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                        text=True, timeout=args.timeout)
                status = "SURVIVED" if result.returncode == 0 else "caught"
                tail = result.stdout.strip().split("\n")[-1]
            except subprocess.TimeoutExpired:
                status, tail = "timeout", f"no result after {args.timeout:.0f} s"
            finally:
                open(target, "w").write(text)
            rows.append((name, path, status, time.time() - start, tail))
            print(f"{name}: {status} ({time.time() - start:.0f} s) {tail}", flush=True)
    table = ["| Mutant | File | Result | Seconds | Last line of pytest |", "| --- | --- | --- | --- | --- |"]
    table += [f"| {n} | {p} | {s} | {t:.0f} | {tail.replace('|', '/')} |" for n, p, s, t, tail in rows]
    caught = sum(s in ("caught", "timeout") for _, _, s, _, _ in rows)
    planted = sum(s != "n/a" for _, _, s, _, _ in rows)
    table.append(f"\n{planted} planted, {caught} caught, {planted - caught} survived.")
    print("\n".join(table))
    if args.report:
        with open(args.report, "w") as f:
            f.write("\n".join(table) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
