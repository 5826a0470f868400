"""Serve a model directory as an OpenAI-compatible, autoscaling HTTP endpoint with Ray Serve.

  python jobs/serve.py --model runs/sweep/winner                       # embedded Ray: serves until Ctrl-C
  ray job submit --working-dir . -- python jobs/serve.py --model /shared/runs/sweep/winner   # deploys and exits;
                                                                       # the app keeps running on the cluster
Then: curl http://127.0.0.1:8000/v1/completions -H 'Content-Type: application/json' \\
        -d '{"model": "minigpt", "prompt": "今天天气", "max_tokens": 32}'
      serve status          # replicas and health;   serve shutdown -y   # remove the app
"""

import os
import sys

from minigpt_ray.config import ConfigError, parse_args
from minigpt_ray.serve_config import ServeConfig

INGRESS = {"haproxy": "HAProxy -> replicas", "proxy": "Serve proxy (start Ray with RAY_SERVE_ENABLE_HA_PROXY=1 "
           "for HAProxy ingress, ~10 ms less per request)"}


def main(argv: list[str] | None = None) -> int:
    try:
        cfg = parse_args(argv, __doc__, ServeConfig)
        # late: --help and config errors stay instant
        from minigpt_ray.serve import cluster_ingress_mode, deploy, serve_until_interrupted

        url = deploy(cfg)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"[minigpt_ray] serving {cfg.model} as {cfg.model_name!r} at {url}/v1/completions "
          f"(app {cfg.app_name!r}, {cfg.scaling.min_replicas}-{cfg.scaling.max_replicas} replicas, "
          f"ingress: {INGRESS[cluster_ingress_mode()]})", flush=True)
    print(f"[minigpt_ray] try: curl {url}/v1/completions -H 'Content-Type: application/json' "
          f"-d '{{\"prompt\": \"今天天气\", \"max_tokens\": 32}}'", flush=True)
    if cfg.ray_address or os.environ.get("RAY_ADDRESS"):
        print("[minigpt_ray] deployed on the cluster; `serve status` shows it, `serve shutdown -y` removes it")
        return 0
    serve_until_interrupted()  # embedded Ray: the app lives as long as this process
    return 0


if __name__ == "__main__":
    sys.exit(main())
