#!/usr/bin/env python3
"""Run the Alembic fixture through URL (the proxy); verify over DIRECT_URL.

usage: run_alembic.py URL DIRECT_URL
Exit 0 on success; otherwise 1 with the failing step, the exception and the
PostgreSQL SQLSTATE when there is one.
"""
import os
import sys

sys.dont_write_bytecode = True  # keep tests/frameworks free of __pycache__
import time
import traceback
from pathlib import Path

# This file sits next to a folder named "alembic": keep it from shadowing
# the installed package.
HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]

import psycopg  # noqa: E402
from alembic import command  # noqa: E402
from alembic.config import Config  # noqa: E402


def sqlstate(exc):
    """The first SQLSTATE found on exc or the exceptions it wraps."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        state = getattr(exc, "sqlstate", None) or getattr(getattr(exc, "orig", None), "sqlstate", None)
        if state:
            return state
        exc = exc.__cause__ or exc.__context__
    return None


def libpq_url(url):
    # psycopg wants a plain libpq URL; tolerate the SQLAlchemy spelling.
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    url, direct = sys.argv[1], libpq_url(sys.argv[2])
    os.environ["ZG_URL"] = url
    cfg = Config(str(HERE / "alembic" / "alembic.ini"))

    def q(sql, *args):
        with psycopg.connect(direct, autocommit=True) as conn:
            cur = conn.execute(sql, args)
            return cur.fetchall() if cur.description else None

    def exists():
        return {
            "entitlements.note": bool(q("SELECT 1 FROM information_schema.columns "
                                        "WHERE table_name='entitlements' AND column_name='note'")),
            "ix_entitlements_note": q("SELECT to_regclass('ix_entitlements_note')")[0][0] is not None,
            "product_sku_map": q("SELECT to_regclass('product_sku_map')")[0][0] is not None,
            "ix_commission_rules_logic": q("SELECT to_regclass('ix_commission_rules_logic')")[0][0] is not None,
        }

    def check(present):
        state = exists()
        wrong = [k for k, v in state.items() if v != present]
        if wrong:
            raise AssertionError(f"expected {'present' if present else 'absent'}: {wrong} (state {state})")

    steps = [
        # The migration creates product_sku_map itself; the harness's schema may have it.
        ("drop product_sku_map (direct)", lambda: q("DROP TABLE IF EXISTS product_sku_map")),
        ("upgrade head #1", lambda: command.upgrade(cfg, "head")),
        ("check after upgrade #1", lambda: check(True)),
        ("downgrade base #1", lambda: command.downgrade(cfg, "base")),
        ("check after downgrade #1", lambda: check(False)),
        ("upgrade head #2", lambda: command.upgrade(cfg, "head")),
        ("check after upgrade #2", lambda: check(True)),
        ("downgrade base #2", lambda: command.downgrade(cfg, "base")),
        ("check after downgrade #2", lambda: check(False)),
    ]
    started = time.monotonic()
    for name, fn in steps:
        t0 = time.monotonic()
        try:
            fn()
        except BaseException as exc:  # SystemExit from env.py included
            traceback.print_exc()
            print(f"FAILED step '{name}': {type(exc).__name__}: {exc}", file=sys.stderr)
            print(f"SQLSTATE: {sqlstate(exc)}", file=sys.stderr)
            return 1
        print(f"ok   {name} ({time.monotonic() - t0:.2f}s)", flush=True)
    print(f"alembic fixture passed in {time.monotonic() - started:.2f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
