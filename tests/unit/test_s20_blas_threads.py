"""set_thread_counts(blas_threads=1) covers every BLAS library the routers run on, scipy's
own OpenBLAS (scikit-learn's solvers) included, even when nothing had loaded it before
(the CLIs call it first thing): run in a fresh interpreter, since the limit is global."""

import json
import subprocess
import sys

CODE = """
import json
from routers.embed import set_thread_counts
set_thread_counts(blas_threads=1)
import sklearn.linear_model  # what the routers load after
from threadpoolctl import threadpool_info
print(json.dumps([(i["internal_api"], i["filepath"], i["num_threads"])
                  for i in threadpool_info() if i["user_api"] == "blas"]))
"""


def test_every_blas_library_runs_one_thread() -> None:
    out = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True,
                         timeout=120, check=True).stdout
    libs = json.loads(out.strip().splitlines()[-1])
    assert any("scipy" in path for _, path, _ in libs), libs
    assert all(n == 1 for _, _, n in libs), libs
