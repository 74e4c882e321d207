#!/usr/bin/env bash
# The recorded Fashion-MNIST CPU experiment, end to end (from the repository root).
# Needs the idx files of ../shared/assets (or any Fashion-MNIST idx files: set ASSETS).
set -euo pipefail
ASSETS=${ASSETS:-../shared/assets/data/fashion_mnist}
RUN=${RUN:-runs/fmnist_cpu}
DATA="--config.data.source=array_record --config.data.path=data/fashion_mnist"
EVAL="--config.eval.feature_net=domain --config.eval.ref_data_path=data/fashion_mnist_test"
for split in train t10k; do
  out=data/fashion_mnist; [ $split = t10k ] && out=data/fashion_mnist_test
  name=train; [ $split = t10k ] && name=test
  [ -e $out/$name.json ] || python -m diffjax.data.convert idx --output $out --split $name \
      --images $ASSETS/$split-images-idx3-ubyte.gz --labels $ASSETS/$split-labels-idx1-ubyte.gz
done
python launch.py --config configs/fashion_mnist.py:cpu --workdir $RUN $DATA
python experiments/plot_metrics.py --workdir $RUN --metrics loss,grad_norm \
    --out experiments/fashion_mnist_cpu/loss_curve.png --title "Fashion-MNIST, 2-core CPU"
cp "$(ls $RUN/samples/step_*.png | sort | tail -1)" experiments/fashion_mnist_cpu/samples.png
python launch.py --config configs/fashion_mnist.py:cpu --workdir $RUN $DATA $EVAL --mode ref_stats
python launch.py --config configs/fashion_mnist.py:cpu --workdir $RUN $DATA $EVAL --mode eval \
    --config.eval.num_samples=1000 --config.eval.seeds=1
cp $RUN/eval/*.json experiments/fashion_mnist_cpu/
