"""The reward actor: a trained checkpoint served with OpenRLHF's remote reward protocol.

- `scoring.RewardScorer`: tokenize like training, score through `core.scoring`, normalise (torch only);
- `protocol`: request limits, validation and the response shape (pure python);
- `app`: the FastAPI endpoints (auth, body limit, errors) shared by both backends;
- `deployment`: the thin Ray Serve wrapper (replicas, `@serve.batch`);
- `runner`, `commands`: `idrm-ray serve` (start, wait healthy, smoke, stop) and its CLI wiring;
- `loadtest`: a bounded loopback load test (N requests, C clients, a deadline);
- `soak`: a timed loopback soak (mixed valid/invalid traffic, 5xx, p50/p99 per window, replica RSS);
  its request cases and clients in `soak_cases`, its report in `soak_report`;
- `checkpoint_check`: does a folder load as OpenRLHF's reward model (also the PPO launch checks);
- `par_reward`: a self-contained OpenRLHF `reward_func` file (PAR shaping / authenticated passthrough);
- `par`: precomputing PAR reference rewards with the server's scorer settings.

Nothing is imported here. The server's config tree is `idrm_ray/config/serve.py`.
"""
