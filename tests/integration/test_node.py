"""node-postgres (pure-JS protocol implementation) through pgcordon behaves as against
PostgreSQL directly: tests/node/check.js prints JSON, compared here."""

import json
import os
import shutil
import subprocess

import pytest

from conftest import DBNAME, LOCAL_USERS, REPO, ROLE_PW

NODE_DIR = REPO / "tests" / "node"


def run_check(host, port, user, password, dbname):
    node = shutil.which("node")
    if node is None:
        pytest.fail("node not found on PATH (scripts/deps.sh installs it)")
    if not (NODE_DIR / "node_modules" / "pg").is_dir() or \
            not (NODE_DIR / "node_modules" / "pg-copy-streams").is_dir():
        pytest.fail(f"node modules missing in {NODE_DIR} (run scripts/deps.sh)")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(PGHOST=host, PGPORT=str(port), PGUSER=user, PGPASSWORD=password,
               PGDATABASE=dbname)
    r = subprocess.run([node, "check.js"], cwd=NODE_DIR, env=env, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, f"check.js failed against {host}:{port}:\n{r.stderr}"
    return json.loads(r.stdout)


def test_node_postgres_same_as_direct(gw, pg):
    direct = run_check(pg.host, pg.port, "gw_scram", ROLE_PW["gw_scram"], DBNAME)
    via = run_check(gw.host, gw.port, "alice", LOCAL_USERS["alice"], "app")
    for key in direct:
        assert via.get(key) == direct[key], f"{key} differs"
    assert via == direct
    assert via["params"]["sum"] == 42 and via["params"]["b"] == "0001ff"
    assert via["bigParamMd5Ok"] is True
    assert via["applicationName"] == "pgcordon-node-check"
    assert [r["v"] for r in via["named"]] == [3, 6, 9, 12, 15, 18]
    assert [p["name"] for p in via["prepared"]] == ["pgcordon-node-stmt"]
    assert via["error"]["code"] == "22012"
    assert via["copyFromRowCount"] == 20000
    assert via["copyTo"]["sameAsInput"] is True
    assert via["copyError"] == {"code": "22P02"}
    assert via["notifications"] == [{"channel": "node_chan", "payload": "first"},
                                    {"channel": "node_chan", "payload": "second from node"}]
    assert via["notices"][0]["message"] == "node notice 1"
