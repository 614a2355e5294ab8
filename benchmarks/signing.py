"""CPU cost of signing one call (busapp.security): what --sign adds per call, without the broker.

Run: python benchmarks/signing.py. One call = the client signs the request, the worker
verifies it and checks its replay memory, the worker signs the reply, the client verifies it.
"""

from __future__ import annotations

import time, json
from busapp.core import wire
from busapp.runtime.gate import ReplayGuard
from busapp.security import Keyring, sign, signer, verify
kr = Keyring({"bench": "bench-secret-0123456789abcdef"})
key = kr.key("bench")
guard = ReplayGuard()
body = wire.encode_request("echo", {"data": {"n": 1, "s": "x" * 40}}, "0123456789abcdef0123456789abcdef")
body = wire.dumps(body).encode()
reply = b'{"jsonrpc":"2.0","id":"0123456789abcdef0123456789abcdef","result":{"data":{"n":1}}}'
N = 20000
def one(i):
    h = signer(key, body, "bench.echo", "busapp.reply.abc", str(i), {"x-busapp-deadline": 1.0})
    verify(kr, h, body, "bench.echo", "busapp.reply.abc", str(i))
    guard.first_time(h, queue="bench")
    r = signer(key, reply, "busapp.reply.abc", None, str(i), None)
    verify({"bench": key[1]}, r, reply, "busapp.reply.abc", None, str(i))
for i in range(2000): one(i)
best = []
for rep in range(5):
    t = time.process_time()
    for i in range(N): one(i + rep * N + 10**6)
    best.append((time.process_time() - t) / N * 1e6)
print(f"signing work per call (2 signs, 2 verifies, 1 replay check): median {sorted(best)[2]:.1f} us CPU, runs {[round(b,1) for b in best]}")
