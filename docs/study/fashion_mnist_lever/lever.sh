#!/bin/bash
# One fair lever (docs/studies.md, "One lever each, chosen on validation"): ACT's alpha and
# TRADES' beta, three candidates each, chosen at 10 epochs on the validation hold-out (the last
# 10,000 training images; training on the other 50,000), then the chosen values trained on all
# 60,000 training images with seeds 0, 1 and 2 and evaluated on the test split as the budget
# study is. Resumable: run it again and finished runs are skipped. The choice is the robust
# model's worst-case accuracy (standard AutoAttack and PGD-20) on the first 1,000 validation
# images, ties broken by PGD-20 on all 10,000 (python -m act_jax.choose_on_validation).
set -euo pipefail
L=docs/study/fashion_mnist_lever
STUDY=(python -m act_jax.study --config=configs/fashion_mnist.py --epochs=10 --autoattack_examples=1000)
VALIDATION=(--config.dataset.validation_examples=10000 --config.eval.split=validation)
for alpha in 0.5 0.7 0.9; do
  "${STUDY[@]}" --workdir=$L/alpha$alpha --methods=act --seeds=0 "${VALIDATION[@]}" \
    --config.act.natural_alpha="$alpha" --config.act.robust_alpha="$alpha"
done
for beta in 1 3 6; do
  "${STUDY[@]}" --workdir=$L/beta$beta --methods=trades --seeds=0 "${VALIDATION[@]}" --config.trades.beta="$beta"
done
alpha=$(python -m act_jax.choose_on_validation --candidates=$L/alpha0.5,$L/alpha0.7,$L/alpha0.9 | tail -1)
beta=$(python -m act_jax.choose_on_validation --candidates=$L/beta1,$L/beta3,$L/beta6 | tail -1)
alpha=${alpha#alpha} beta=${beta#beta}
echo "chosen on validation: alpha $alpha, beta $beta"
"${STUDY[@]}" --workdir=$L/chosen --methods=act,trades --seeds=0,1,2 \
  --config.act.natural_alpha="$alpha" --config.act.robust_alpha="$alpha" --config.trades.beta="$beta"
