"""The runtime side: the promoted model served behind a guard (docs/serving.md).

* :mod:`serve.model` - the production model, loaded only through verified loading, answering from its sandbox;
* :mod:`serve.contract` - the input contract recorded in the signed ``training.json``;
* :mod:`serve.keys` - API keys (their sha256 only) and what each client is entitled to;
* :mod:`serve.guard` - the pure-ASGI guard: budgets, detectors, drift windows, the response ladder, alerts, metrics;
* :mod:`serve.detectors`, :mod:`serve.drift` - the detectors (one class each) and the window tests;
* :mod:`serve.store` - where the guard's shared state lives (Redis, or memory for one worker);
* :mod:`serve.alerts` - alerts in Falco's output format;
* :mod:`serve.app` - the FastAPI app (``airlock serve``).

A new runtime detector goes in serve/detectors.py (a class with ``observe``), registered in ``DETECTORS``.
"""
