"""Running the stages as Ray jobs on a cluster: the runtime_env, the job configs, `secondthought submit`."""
