"""The catalog of finding ids: what each means, how traindoc proves it, how to fix it.

Ids are a public contract: stable, kebab-case, never reused with another meaning.

    >>> from traindoc.catalog import CATALOG, entry
    >>> entry("batch-mixing").category
    'model'
    >>> all(e.meaning and e.proof and e.fix for e in CATALOG.values())
    True

`docs/findings.md` is generated from this module (``traindoc catalog --markdown``).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Entry:
    id: str
    category: str  # data | model | optimization | resources | distributed | internal
    meaning: str
    proof: str
    fix: str


_ENTRIES = [
    # ---------------------------------------------------------------- data
    Entry(
        "label-out-of-range", "data",
        "Some targets are outside the classes the model predicts (>= the output width, num_labels "
        "or vocab size, or negative other than ignore_index; BCE targets outside [0, 1]). CrossEntropy "
        "then reads out of bounds: NaN loss or 'Target is out of bounds' on CPU, a device-side assert on "
        "CUDA.",
        "The targets the loss actually receives are compared with the width of the logits it "
        "receives, respecting its ignore_index; the offending sample indices and values are listed, "
        "with where the width comes from (config.num_labels, the vocabulary). traindoc's own pass "
        "ignores those targets so that the rest of the check can run.",
        "Remap the labels to 0..C-1, or build the head with the right number of classes "
        "(`num_labels=C` in Hugging Face); mark positions to skip with -100, not another value.",
    ),
    Entry(
        "pad-equals-eos", "data",
        "The pad token is the EOS token and the EOS targets are masked out of the loss (or never "
        "present), so the model never learns to end a sequence and generation runs on; or the pads "
        "are left in the labels, so every pad is an EOS target.",
        "pad_token_id == eos_token_id on the tokenizer or config, and the targets that reach the "
        "loss contain no EOS while the batch's targets or inputs hold real ones (error; a warning when "
        "the batch has no real EOS at all), or EOS targets reach the loss at pad positions (error).",
        "Mask padding by the attention mask, not by token id: set labels to -100 where "
        "attention_mask == 0 and keep the first EOS of each sequence as a target; or add a "
        "dedicated pad token (`tokenizer.add_special_tokens({'pad_token': '[PAD]'})` and resize "
        "the embeddings).",
    ),
    Entry(
        "padding-in-loss", "data",
        "Padding positions are counted in the loss: the model is trained to predict pad tokens, "
        "which lowers the loss without learning anything and biases generation.",
        "Targets at positions where the attention mask is 0 reach the loss with a weight, not as "
        "ignore_index (error); without an attention mask, trailing runs of the pad id (warning). Each "
        "loss target is mapped back to its batch position (same, shifted inside the model, or a "
        "masked selection, where more targets of a value than real positions hold is the proof).",
        "Set labels to -100 (the ignore_index) where attention_mask == 0, e.g. "
        "`labels = labels.masked_fill(attention_mask == 0, -100)`, or use "
        "`DataCollatorForLanguageModeling(tokenizer, mlm=False)`.",
    ),
    Entry(
        "labels-not-shifted", "data",
        "For a token-prediction task computed outside the model, the targets equal the inputs at "
        "the same position: the model learns to copy its input, the loss collapses to ~0 and "
        "nothing is learned.",
        "The targets that reach the loss equal the model's input ids at the same positions (for "
        "Hugging Face causal LMs, which shift inside the model, `labels == input_ids` is correct and "
        "is not reported).",
        "Shift by one: `logits[:, :-1]` against `input_ids[:, 1:]`, or pass `labels=input_ids` to a "
        "Hugging Face causal LM and let it shift.",
    ),
    Entry(
        "repeated-batch", "data",
        "The same batch is fed again and again (a data loader re-created inside the loop, an "
        "iterator not advanced): the loss falls on that batch but the model learns nothing general.",
        "During training (`traindoc.watch` with the batch logged), each step's batch is fingerprinted on "
        "the device; the same fingerprint on 8 consecutive optimizer steps (a warning: full-batch "
        "training on purpose gives the same signal).",
        "Create the DataLoader once outside the loop and take a new batch every step (`for batch in "
        "loader:`); with `shuffle=True` each epoch also sees a new order.",
    ),
    Entry(
        "class-imbalance", "data",
        "One class dominates the targets, so predicting it always is a strong baseline the model "
        "must beat before any accuracy means anything.",
        "The class histogram of the targets that reach the loss (at least 16), with the majority "
        "class's share (>= 0.8 for 2-3 classes, >= max(0.5, 3/C) for more, 0.8 for token "
        "classification) and the accuracy of the majority baseline and the loss of the frequency "
        "baseline.",
        "Compare your loss with the baseline's; use class weights (`CrossEntropyLoss(weight=...)`) or "
        "a balanced sampler if the minority classes matter.",
    ),
    Entry(
        "loss-at-chance", "data",
        "The loss sits at the loss of uniform guessing (ln C or ln V): the model has learned nothing "
        "from its inputs.",
        "A plateau of the watched loss (see loss-plateau) within 5% of ln(number of classes).",
        "Run `traindoc.check(model, batch)` on one batch (inputs that never reach the loss, labels that do "
        "not match the inputs, masks that hide every token); decode a batch and look at it; check that the "
        "model can overfit that one batch.",
    ),
    Entry(
        "loss-collapse", "data",
        "Early in training the loss falls far below any sensible value, to ~0, on data the model had not "
        "seen: it usually sees its targets in its inputs (targets equal to the inputs at the same "
        "positions, a causal LM whose attention sees later positions).",
        "During training: the rolling median of 20 losses falls below 1% of ln C (C = classes or "
        "vocabulary) within the first 500 steps of a model that started near chance. A warning when the "
        "logged batches were new to the model, a hint when no batch was logged (a task this easy, or "
        "memorising a few batches on purpose, collapses too); nothing when most batches had been seen "
        "before.",
        "Run `traindoc.check(model, batch)` on one batch: it proves or rules out targets equal to the "
        "inputs (labels-not-shifted) and attention that sees the future (causal-leak).",
    ),
    # --------------------------------------------------------------- model
    Entry(
        "batch-mixing", "model",
        "The output for one sample depends on other samples of the batch, so the model trains on "
        "information that will not be there at inference. Most often `nn.Transformer`/"
        "`nn.MultiheadAttention` left at `batch_first=False` and fed (B, T, E) tensors: attention "
        "then runs across the batch.",
        "In eval mode, the gradient of sample i's output (times a random projection) with respect "
        "to the input embeddings of the other samples must be exactly zero; traindoc reports the "
        "largest non-zero cross-sample gradient, and which attention modules received a batch-"
        "sized sequence axis.",
        "Build the layers with `batch_first=True` (`nn.Transformer(..., batch_first=True)`), or "
        "transpose inputs to (T, B, E) and masks to (B, T) as the layer expects.",
    ),
    Entry(
        "causal-leak", "model",
        "An autoregressive model sees the tokens it must predict: the loss falls fast in training "
        "and generation is garbage. Typically `nn.Transformer`/`TransformerDecoder` without "
        "`tgt_mask`, or a hand-written attention without a causal mask.",
        "For teacher-forced targets, the gradient of the output at position t with respect to "
        "input positions > t must be zero; and/or the decoder's self-attention modules were "
        "observed receiving no causal mask (attn_mask None, is_causal False).",
        "Pass a causal mask: `tgt_mask = nn.Transformer.generate_square_subsequent_mask(T)` (and "
        "`tgt_is_causal=True`), or `is_causal=True` to scaled_dot_product_attention.",
    ),
    Entry(
        "padding-leak", "model",
        "Outputs at real tokens depend on the content of padding, usually because a Hugging Face "
        "attention mask (1 = keep) was passed as a PyTorch key-padding mask (True = ignore): the "
        "model ignores the real tokens and attends to the pads.",
        "The gradient of outputs at real tokens with respect to the embeddings at pad positions "
        "must be zero; and/or the key-padding mask an attention module received is True exactly "
        "where the batch's attention mask marks real tokens.",
        "Invert the mask: `key_padding_mask = attention_mask == 0` (True marks padding).",
    ),
    Entry(
        "nan-forward", "model",
        "The forward pass or the loss produces NaN/Inf.",
        "Forward hooks find the first module (in execution order) whose output is non-finite, with "
        "its path and the samples affected; when only the loss is NaN, per-sample losses show "
        "which samples, and what they share (e.g. their label).",
        "Depends on the culprit: fix out-of-range labels, lower the LR, use a stable formulation "
        "(log_softmax + nll instead of log(softmax)), add eps to divisions and norms, or run that "
        "module in float32 under autocast.",
    ),
    Entry(
        "init-loss-mismatch", "model",
        "At initialisation the loss is far from what uniform guessing gives (ln C for C classes): "
        "the output layer is badly scaled or the loss is wired wrong.",
        "The loss on the batch, with weights as they are, compared with ln(C) for the logits' width "
        "(only for a model that looks untrained).",
        "Initialise the last layer small (e.g. `nn.init.zeros_(head.weight)` or std 0.02) and check "
        "that the loss receives raw logits and the right targets.",
    ),
    Entry(
        "double-softmax", "model",
        "The loss receives probabilities (the output of softmax or sigmoid) where it expects logits: "
        "cross_entropy applies a second softmax to values in [0, 1], so every prediction stays near "
        "uniform and the gradients shrink (training stalls); nll_loss given probabilities computes -p[y] "
        "instead of -log p[y]; binary_cross_entropy_with_logits given a sigmoid's output applies a second "
        "sigmoid. (Log-probabilities into cross_entropy are harmless: log_softmax of log_softmax is the "
        "same thing, so that is not reported.)",
        "The tensor reaching cross_entropy/nll_loss has rows that are non-negative and sum to 1, or the "
        "tensor reaching binary_cross_entropy_with_logits was produced by a sigmoid (read from the "
        "autograd graph); the softmax module, when there is one, is named.",
        "Remove the softmax from the model's forward and give the loss raw logits; apply softmax "
        "only for inference.",
    ),
    Entry(
        "nll-without-log-softmax", "model",
        "nll_loss (nn.NLLLoss) receives raw scores instead of log-probabilities: it only picks -x[y], so "
        "the loss has no lower bound (it goes negative) and the other classes are never pushed down.",
        "The tensor that reaches nll_loss is neither probabilities (double-softmax) nor log-probabilities: "
        "some value is above 0 or some row's log-sum-exp is away from 0 beyond rounding.",
        "Apply `F.log_softmax(logits, dim=-1)` before nll_loss, or use `nn.CrossEntropyLoss()` on the raw "
        "logits, which does both.",
    ),
    Entry(
        "loss-broadcast", "model",
        "An element-wise loss (MSE, L1, smooth L1, Huber, BCE, KL) gets a prediction and a target of "
        "different shapes that broadcast: a (B, 1) prediction against a (B,) target becomes (B, B), every "
        "prediction scored against every target, and the model learns the batch mean.",
        "The shapes of the tensors that reach the loss: different, and broadcasting to more elements than "
        "either holds. torch itself only warns.",
        "Match the shapes: `loss_fn(pred.squeeze(-1), target)` or `loss_fn(pred, target.unsqueeze(-1))`.",
    ),
    Entry(
        "no-grad-params", "model",
        "Trainable parameters get no gradient (or an all-zero one) from the loss, so they never "
        "move: a head not connected to the loss, a branch cut by `.detach()`/`torch.no_grad()`, "
        "or an unused module.",
        "After one backward of the user's loss, parameters with requires_grad=True whose .grad is "
        "None or exactly zero, grouped by module.",
        "Connect the module to the loss (use its output), remove the detach/no_grad, or freeze it "
        "explicitly with `requires_grad_(False)` if that is intended.",
    ),
    Entry(
        "params-not-in-optimizer", "model",
        "Trainable parameters are in no param group of the optimizer, so they never move — e.g. a "
        "head built after the optimizer was created.",
        "The set of parameters with requires_grad=True is compared, by identity, with the params "
        "of every param group; frozen parameters inside the optimizer are reported as a hint. During "
        "training: after the first step, none of the open watches' optimizers holds them and they have not "
        "moved (warning: an unwatched optimizer may still train them); at close, they never moved over "
        "the run (error, replacing the warning).",
        "Create the optimizer after the model is complete (`optimizer = AdamW(model.parameters(), "
        "...)`) or `optimizer.add_param_group({'params': head.parameters()})`.",
    ),
    Entry(
        "train-mode-off", "model",
        "The model is in eval mode while training: dropout is off and BatchNorm does not update its "
        "statistics.",
        "model.training is False (or some submodules are in eval) at the time of the optimizer "
        "step.",
        "Call `model.train()` at the start of each training epoch (after evaluation).",
    ),
    # --------------------------------------------------------- optimization
    Entry(
        "lr-too-high", "optimization",
        "The learning rate is too high for this model: the loss is unstable or diverges, or, for a "
        "pretrained transformer, fine-tuning destroys what it knew.",
        "Statically: Adam/AdamW lr >= 5e-4 on a model loaded from a checkpoint (a Hugging Face config "
        "naming one, with normalisation weights off their initial 1 and 0: a model built from a config "
        "trains from scratch); the usual range is 1e-5..1e-4. During training: update/weight ratios far "
        "above ~1e-3, loss rising with lr.",
        "Lower the learning rate until updates are ~1e-3 of the weights per step (fine-tuning a "
        "pretrained transformer usually wants 1e-5..1e-4) and add warmup; `traindoc tune lr train.py` "
        "measures the best LR of your script by short runs.",
    ),
    Entry(
        "lr-too-low", "optimization",
        "The learning rate is so low that the weights barely move and the loss falls very slowly.",
        "Update/weight ratios far below ~1e-3 for a window of steps while the loss is not falling.",
        "Raise the learning rate by 3-10x at a time while the loss still falls smoothly, until updates "
        "are ~1e-3 of the weights per step; `traindoc tune lr train.py` measures the best LR by short runs.",
    ),
    Entry(
        "missing-zero-grad", "optimization",
        "Gradients are never reset between steps, so they accumulate and each step uses the sum "
        "of all past gradients.",
        "The gradient observed before the first backward of a step is not zero/None on 3 consecutive "
        "steps (error); where that cannot be observed, the gradient norm grows like a running sum "
        "(warning).",
        "Call `optimizer.zero_grad(set_to_none=True)` once per optimizer step, right after "
        "`optimizer.step()`.",
    ),
    Entry(
        "scheduler-misuse", "optimization",
        "The LR schedule does not do what was meant: the LR collapses to ~0 early, or a schedule "
        "built for epochs is stepped every batch.",
        "The LR of each param group, per step: it collapsed below 1e-3 of its peak and training went on "
        "at it for a quarter as long again, or it lost 90% within the first ~10% of the run and stayed "
        "there.",
        "Step epoch-based schedulers once per epoch, or build the schedule with the number of "
        "optimizer steps (`get_linear_schedule_with_warmup(opt, warmup, total_steps)`).",
    ),
    Entry(
        "grad-accum-normalization", "optimization",
        "With gradient accumulation the loss is not divided by the number of micro-batches (or is "
        "averaged per micro-batch of different token counts), so the effective LR scales with the "
        "accumulation count. In the Hugging Face Trainer (transformers 5.x) this happens when the "
        "model's forward accepts `**kwargs`: the Trainer then passes `num_items_in_batch` and stops "
        "dividing by `gradient_accumulation_steps`, trusting the model to sum its per-item losses and "
        "divide by the step's item count; a model that ignores it and returns a plain mean (the BERT "
        "heads) gets every gradient and logged loss k times too large (a k-times LR with SGD; with Adam "
        "mostly harder clipping at max_grad_norm). A loss normalised by `num_items_in_batch` that is "
        "divided again is k times too small.",
        "Any loop (a warning): the gradient norm at the optimizer step tracks the number of backward "
        "calls since the last step; a constant count cannot be told from a larger LR. Hugging Face "
        "Trainer (`TraindocCallback`, error): on the first steps' micro-batches the loss the model "
        "returned is recomputed from its logits and labels as the plain mean over its items and as "
        "the item-loss sum / `num_items_in_batch` (mirroring its loss: cross-entropy over samples or "
        "tokens, shifted for causal LMs; MSE; BCE; -100 ignored), and a hook on the returned loss "
        "measures the gradient the backward sends into it: 1 if the Trainer used it as returned, 1/k "
        "if it divided. A plain mean that the Trainer did not divide (or a normalised sum that it "
        "did) is proved; the evidence adds the first step's loss against k x ln C for a fresh "
        "C-class head.",
        "Divide each micro-batch loss by the number of accumulation steps (or by the total number "
        "of tokens of the accumulated batch); `accelerator.accumulate` does it for you. Hugging Face "
        "Trainer with a model that ignores `num_items_in_batch`: `trainer.loss_is_scaled_for_ga = "
        "False` before `trainer.train()`, or `model.accepts_loss_kwargs = False` before building the "
        "Trainer; with a loss already normalised by `num_items_in_batch`, do not divide it again.",
    ),
    Entry(
        "cannot-overfit-batch", "optimization",
        "The model cannot learn a single batch by heart with the loop's optimizer and LR: if it cannot fit "
        "8 examples, it will not learn the dataset. The Hugging Face course's first check.",
        "`traindoc overfit` (or `traindoc.experiments.overfit_batch`) trains a copy on one batch (the one with "
        "the most distinct targets) and watches the loss: non-finite (error), not moving, with the cause "
        "read from the copy: no gradient, parameters outside the optimizer, LR ~0 (error), oscillating (LR "
        "too high) or stopping above 2% of its first value (LR too low or model too small) (warnings).",
        "Follow the diagnosis: connect the loss, build the optimizer after the model, set a working LR "
        "(`traindoc tune lr`), or give the model the capacity and inputs the task needs.",
    ),
    Entry(
        "loss-spike", "optimization",
        "The loss jumps far above its recent level for a step or a few.",
        "The loss is more than k robust deviations (median absolute deviation) above the rolling "
        "median of a window.",
        "Look at the batches of the spike's steps first (a shard of another scale, corrupt samples); "
        "if they are ordinary, add LR warmup, clip gradients near the 90th percentile of their norms, or "
        "lower the LR.",
    ),
    Entry(
        "divergence", "optimization",
        "The loss rises steadily or becomes non-finite: training is unstable at this LR.",
        "The rolling median of the loss climbs well above its best value and stays there.",
        "A rising loss: lower the LR (10x; `traindoc tune lr`), add warmup (`traindoc tune warmup`) and "
        "gradient clipping; in deep transformers prefer "
        "pre-norm blocks (x + f(Norm(x))). A loss stuck at NaN: fix where the NaN was born (nan-loss, "
        "nan-forward) and restart from a checkpoint before it.",
    ),
    Entry(
        "loss-plateau", "optimization",
        "The loss has stopped improving while the LR is not ~0: stuck after learning little, or "
        "converged at this LR.",
        "The medians of the last two blocks of the loss (each at least a quarter of the run so far, and "
        "long enough for the loss's own noise) differ by less than 2%, outside warmup and with the LR "
        "above 1% of its peak; a warning while the loss is above 2/3 of its start, a hint when it fell "
        "further under a constant LR.",
        "Stuck high: run `traindoc.check(model, batch)` on one batch (masks, batch layout, labels) and "
        "check that the model can overfit that batch. Converged: decay the LR, or stop.",
    ),
    Entry(
        "vanishing-gradients", "optimization",
        "Gradient norms shrink by orders of magnitude from the last layers to the first: early "
        "layers stop learning.",
        "Per-layer gradient norms across depth.",
        "Use a non-saturating activation, residual connections and normalisation layers, and an init "
        "scaled to the activation (Kaiming for ReLU).",
    ),
    Entry(
        "exploding-gradients", "optimization",
        "Gradient norms grow by orders of magnitude (across depth or over steps).",
        "Per-layer and global gradient norms over steps.",
        "Across depth: a variance-preserving init (std ~ 1/sqrt(fan_in)) or normalisation layers. Over "
        "time: lower the LR, add warmup, clip near the 90th percentile of the norms.",
    ),
    Entry(
        "stalled-layers", "optimization",
        "Some layers' weights barely change: the update/weight ratio is tiny for a window of steps.",
        "||delta w|| / ||w|| per layer for every optimizer step in a window.",
        "No gradient: use the layer's output in the loss (or freeze it). A gradient but an LR of ~0: give "
        "its param group a real LR. A gradient and an ordinary LR: its gradients vanish or its weights are "
        "far too large.",
    ),
    Entry(
        "aggressive-clipping", "optimization",
        "More than half of the steps are clipped hard (the update cut by 20% or more): the clipping is a "
        "disguised LR decrease.",
        "The pre-clip global gradient norm exceeded 1.25x the clipping threshold on > 50% of the last "
        "100 clipped-or-not steps (the first 10 left out; a short run is judged at close after its first "
        "fifth).",
        "Lower the learning rate instead, and set the clip threshold near the 90th percentile of "
        "the unclipped gradient norms (`traindoc tune clip` measures it).",
    ),
    Entry(
        "weight-decay-on-norms", "optimization",
        "Weight decay is applied to biases and normalisation weights, which is usually unintended.",
        "Param groups with weight_decay > 0 contain 1-d parameters (biases, LayerNorm weights).",
        "Put biases and norm weights in a param group with weight_decay=0.",
    ),
    Entry(
        "nan-loss", "optimization",
        "The loss or the gradients became NaN/Inf during training; every step after that either "
        "skips or writes NaN into the weights.",
        "The first optimizer step whose logged loss is non-finite or whose gradients hold "
        "non-finite elements, with the first parameter (model order) whose gradient went "
        "non-finite; the saved batch is replayed through the nan-forward probe to name the module.",
        "Look at the module and samples named by nan-forward: fix out-of-range labels, use "
        "log_softmax/cross_entropy instead of log(softmax), add eps to divisions and norms, lower "
        "the LR or add warmup and clipping.",
    ),
    # ----------------------------------------------------------- resources
    Entry(
        "oom-risk", "resources",
        "Weights + gradients + optimizer state + activations for this batch approach or exceed the "
        "device's memory.",
        "Measured peak memory on CUDA; an estimate from parameter counts, optimizer type and the "
        "activation sizes seen in one forward on CPU.",
        "Halve the batch and use gradient accumulation, enable gradient checkpointing, or use "
        "mixed precision.",
    ),
    # ---------------------------------------------------------- distributed
    Entry(
        "ddp-same-data", "distributed",
        "Every process of a distributed run trains on the same batches (a DataLoader that shuffles "
        "with a seed every rank shares, or reads in order, with no DistributedSampler): N processes do "
        "the work of one, and the gradients DDP averages are N copies of the same gradient.",
        "Under `traindoc run` each rank fingerprints the batches its model takes at its first training "
        "calls (up to 8); rank 0 compares them position by position. All of at least 2 compared "
        "batches equal between two ranks: error. The DataLoaders' sampler types are named.",
        "Give each rank its own shard: `sampler = DistributedSampler(dataset, shuffle=True)`, "
        "`DataLoader(dataset, batch_size=..., sampler=sampler)` (no shuffle=True next to it), and "
        "call `sampler.set_epoch(epoch)` at the start of each epoch.",
    ),
    Entry(
        "ddp-set-epoch-missing", "distributed",
        "A shuffling DistributedSampler is iterated for several epochs without `set_epoch`: it shuffles "
        "with seed + epoch, so every epoch visits the samples in the same order.",
        "The sampler's epoch is read each time it starts an iteration: two or more iterations of a "
        "sampler with shuffle=True, all at the same epoch (warning: the order repeats, training goes on).",
        "Call `sampler.set_epoch(epoch)` at the start of each epoch, before iterating the DataLoader.",
    ),
    Entry(
        "ddp-wrapper-bypassed", "distributed",
        "The training loop calls the module inside DistributedDataParallel (`model.module(x)`, or the "
        "model it was built from) instead of the DDP wrapper: DDP does not prepare its reducer, the "
        "gradients are never averaged, and each rank's copy drifts apart.",
        "A DistributedDataParallel wrapper was built around the model, and the training call the "
        "first optimizer step follows went to the inner module, not to the wrapper; the replicas' "
        "weights at the end of the run are compared across ranks as confirmation.",
        "Call the wrapper: `ddp_model = DDP(model)`, then `out = ddp_model(x)` in the loop; keep "
        "`ddp_model.module` for saving and evaluation only.",
    ),
    Entry(
        "ddp-replicas-diverged", "distributed",
        "The ranks' copies of the model hold different weights at the end of the run: the gradients "
        "are not averaged (no DDP wrapper, its forward bypassed, parameters changed on one rank), so "
        "the processes train separate models and the checkpoint is rank 0's alone.",
        "Each rank fingerprints every parameter (sum and L2 norm) at the first optimizer step and at "
        "the end; rank 0 compares the ranks that ran the same number of steps. Equal at the start and "
        "different at the end by more than 1e-5 of the parameter's norm: error when the model is "
        "wrapped in DDP (which keeps replicas equal), warning when it is not (ranks may train separate "
        "models on purpose). Models whose parameters differ already at the start (sharded, tensor "
        "parallel) are not judged.",
        "Wrap the model in `DistributedDataParallel(model)` and call the wrapper in the loop; do not "
        "change parameters on one rank only.",
    ),
    Entry(
        "ddp-unused-parameters", "distributed",
        "DistributedDataParallel (built with find_unused_parameters=False) stopped the run with "
        "'Expected to have finished reduction in the prior iteration': some parameters took no part "
        "in the loss, so their gradients were never reduced.",
        "The crash's message names the parameter indices that got no gradient; they are mapped to the "
        "names of the parameters DDP holds, and the DDP construction line is named.",
        "Remove or use the modules that the forward skips, freeze them with `requires_grad_(False)` "
        "before wrapping, or pass `find_unused_parameters=True` to DDP (one extra graph traversal per "
        "step).",
    ),
    # ------------------------------------------------------------ internal
    Entry(
        "probe-failed", "internal",
        "One of traindoc's own steps (a probe, a monitor hook, a detector, the NaN replay) failed on this "
        "model or run; its question is unanswered. Your training was not affected.",
        "The step raised; the exception, where it happened and how often are recorded.",
        "Nothing to fix in your training: this question is unanswered. Please report it to traindoc "
        "with the evidence.",
    ),
    Entry(
        "probe-skipped", "internal",
        "A probe did not apply to this model or batch (e.g. no token embeddings to perturb).",
        "The probe's precondition was not met; the reason is recorded.",
        "Nothing to fix; pass `task=` or `tokenizer=` if traindoc guessed wrong.",
    ),
]

CATALOG: dict[str, Entry] = {e.id: e for e in _ENTRIES}


def entry(finding_id: str) -> Entry:
    """The catalog entry for an id (KeyError with the known ids if it does not exist)."""
    try:
        return CATALOG[finding_id]
    except KeyError:
        raise KeyError(f"unknown finding id {finding_id!r}; known: {sorted(CATALOG)}") from None


def markdown() -> str:
    """The catalog as a Markdown page (the source of docs/findings.md)."""
    lines = ["# Finding ids", "", "Generated from `traindoc.catalog` by `traindoc catalog --markdown`.", ""]
    for category in ("data", "model", "optimization", "resources", "distributed", "internal"):
        lines += [f"## {category}", ""]
        for e in _ENTRIES:
            if e.category == category:
                lines += [f"### `{e.id}`", "", e.meaning, "", f"**How traindoc proves it.** {e.proof}", "",
                          f"**Fix.** {e.fix}", ""]
    return "\n".join(lines)
