"""pgjdbc (pure-Java protocol implementation) through pgcordon behaves as against PostgreSQL
directly: tests/java/JdbcCheck.java is compiled at test time and its output compared."""

import os
import shutil
import subprocess

import pytest

from conftest import DBNAME, LOCAL_USERS, REPO, ROLE_PW

JAR = "/usr/share/java/postgresql.jar"
SRC = REPO / "tests" / "java" / "JdbcCheck.java"


@pytest.fixture(scope="module")
def jdbc_classes(tmp_path_factory):
    if shutil.which("javac") is None or shutil.which("java") is None:
        pytest.fail("javac/java not found (scripts/deps.sh installs default-jdk-headless)")
    if not os.path.exists(JAR):
        pytest.fail(f"{JAR} not found (scripts/deps.sh installs libpostgresql-jdbc-java)")
    out = tmp_path_factory.mktemp("jdbc")
    r = subprocess.run(["javac", "-encoding", "UTF-8", "-cp", JAR, "-d", str(out), str(SRC)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return out


def run_check(classes, host, port, dbname, user, password):
    url = f"jdbc:postgresql://{host}:{port}/{dbname}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    r = subprocess.run(["java", "-Duser.timezone=America/New_York", "-Dfile.encoding=UTF-8",
                        "-cp", f"{classes}{os.pathsep}{JAR}", "JdbcCheck", url, user, password],
                       capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 0, f"JdbcCheck failed against {host}:{port}:\n{r.stdout}\n{r.stderr}"
    return r.stdout.splitlines()


def test_pgjdbc_same_as_direct(gw, pg, jdbc_classes):
    direct = run_check(jdbc_classes, pg.host, pg.port, DBNAME, "gw_scram", ROLE_PW["gw_scram"])
    via = run_check(jdbc_classes, gw.host, gw.port, "app", "alice", LOCAL_USERS["alice"])
    assert via == direct
    assert via[-1] == "done"
    assert "show TimeZone = America/New_York" in via
    # After prepareThreshold executions the statement is a named server-side statement.
    assert via[5] == "prep 1 10 item 1 1.25 server=false"
    assert via[13].startswith("prep 9 90 item 9") and via[13].endswith("server=true")
    assert any(line.startswith("stmt S_") for line in via)
    assert "batch 300 sum=300" in via
    assert any(line.startswith("batch error 23505") for line in via)
    assert "tx 600" in via
    assert "fetch 97 5044" in via
    assert "copy in 2000" in via and "copy out same true" in via
    assert sum(1 for line in via if line.startswith("binary ")) == 3
