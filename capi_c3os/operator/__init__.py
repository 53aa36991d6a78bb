"""kopf wiring only: the `run` command, leader election, handlers, settings, health,
metrics and logs. The only package that imports kopf; everything it calls to do real
work lives in `capi_c3os.reconcilers` and `capi_c3os.capi`."""
