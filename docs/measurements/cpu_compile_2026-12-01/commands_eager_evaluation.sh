# The cold and warm start of a compiled run of the seed network on the CPU, with model.compile_eval=false (the
# default since: validation and test eager) and true; the whole command's wall time and its first-step line.
cd "$(dirname "$0")/../../.."
OUT=docs/measurements/cpu_compile_2026-12-01
for eval in false true; do
  rm -rf /tmp/meas/cache_eval_$eval
  for run in cold warm; do
    start=$(date +%s.%N)
    .venv/bin/python src/train.py data=synthetic data.train_per_class=2 data.val_per_class=1 data.test_per_class=1 data.batch_size=8 \
      trainer=cpu trainer.max_epochs=1 trainer.limit_train_batches=3 model.compile=true model.compile_eval=$eval \
      paths.compile_cache_dir=/tmp/meas/cache_eval_$eval logger=csv extras.print_config=false \
      hydra.run.dir=/tmp/meas/run_eval_${eval}_$run > /tmp/meas/train_eval_${eval}_$run.txt 2>&1
    wall=$(echo "$(date +%s.%N) - $start" | bc)
    echo "compile_eval=$eval $run: whole command ${wall} s; $(grep -h 'First training step' /tmp/meas/run_eval_${eval}_$run/train.log | sed 's/.*INFO\] - //')" >> $OUT/train_eager_evaluation.txt
  done
done
