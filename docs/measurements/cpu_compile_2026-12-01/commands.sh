cd /work/main
OUT=docs/measurements/cpu_compile_2026-12-01; mkdir -p $OUT
for bps in 2 4; do
  .venv/bin/python -m wrncifar.bench --device cpu --batch-size 8 --steps 2 --warmup 1 --train-images 200 --blocks-per-stage $bps \
    --cases plain/device/fp32/compiled plain/device/fp32/compiled-blocks --json $OUT/bench_blocks_per_stage_$bps.json > $OUT/bench_blocks_per_stage_$bps.txt 2>&1
done
for scope in network blocks; do
  rm -rf /tmp/meas/cache_$scope
  for run in cold warm; do
    .venv/bin/python src/train.py data=synthetic data.train_per_class=2 data.val_per_class=1 data.test_per_class=1 data.batch_size=8 \
      trainer=cpu trainer.max_epochs=1 trainer.limit_train_batches=3 test=false model.compile=true model.compile_scope=$scope \
      paths.compile_cache_dir=/tmp/meas/cache_$scope logger=csv extras.print_config=false hydra.run.dir=/tmp/meas/run_${scope}_$run > /tmp/meas/train_${scope}_$run.txt 2>&1
    grep -h "First training step" /tmp/meas/run_${scope}_$run/train.log | sed "s/^/$scope $run: /" >> $OUT/train_first_step.txt
  done
done
echo done
