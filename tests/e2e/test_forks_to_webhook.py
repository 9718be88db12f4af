"""Every media-fork dialect end to end, in real time, against ONE daemon subprocess: per dialect a call with
the marked clip on one leg and the clean clip on the other (single-leg dialects: the marked clip on their
one leg) gives exactly one verified `call.spoof_detected` naming that leg and a `call.summary`; a clean
call gives only its summary. All 27 calls run at once over the shared websocket listener (and AudioSocket
over TCP), so the test costs one clip's duration. Two independent clients per dialect: the compact
in-test encoders of tests/integration/fork_clients.py (a spoof call, marked on the second leg for three
dialects, and a clean call each) and `spoofwatch loadgen <dialect>` (a spoof call each, marked on the
first party: caller / inbound / customer)."""

from __future__ import annotations

import asyncio
import os
import re
import sys
import uuid
from pathlib import Path

import pytest

from tests.e2e.harness import ROOT, receiver, start_daemon, write_config
from tests.integration.fork_clients import (
    AUDIOHOOK_KEY,
    AUDIOHOOK_SECRET_B64,
    CONFIG,
    ENV,
    EXOTEL_BASIC,
    FORK_SECRET,
    TELNYX_TOKEN,
    WS_DIALECTS,
    audiosocket_plan,
    load_clip,
    plan,
    play,
    play_audiosocket,
)

pytestmark = pytest.mark.slow

#: dialects whose marked clip goes on the SECOND leg (proves the leg names are not just "the first")
MARK_SECOND = {"telnyx", "freeswitch", "audiohook"}
ALL = (*WS_DIALECTS, "audiosocket")
#: the leg `spoofwatch loadgen <dialect> --clip marked` marks (its first party)
LOADGEN_LEG = {"telnyx": "inbound", "plivo": "inbound", "exotel": "inbound", "vonage": "mixed",
               "freeswitch": "caller", "jambonz": "caller", "asterisk_ws": "channel", "audiohook": "customer",
               "audiosocket": "channel"}
#: loadgen has no Basic credentials for jambonz: its wsAuth check is left off in this test
E2E_CONFIG = CONFIG.replace('[ingest.jambonz]\nenabled = true\nbasic_auth_env = "E2E_JAMBONZ_BASIC"\n',
                            "[ingest.jambonz]\nenabled = true\n")


def loadgen_args(dialect: str, ports: dict[str, int]) -> list[str]:
    """`spoofwatch loadgen <dialect>` for one spoof call with the daemon's auth of E2E_CONFIG."""
    common = ["--calls", "1", "--clip", "marked", "--other-clip", "clean"]
    if dialect == "audiosocket":
        return ["audiosocket", "--port", str(ports["audiosocket"]), *common, "--rate", "16000"]
    path = {"asterisk_ws": "/asterisk"}.get(dialect, f"/{dialect}")
    name = "asterisk" if dialect == "asterisk_ws" else dialect
    args = [name, "--url", f"ws://127.0.0.1:{ports['websocket']}{path}", *common, "--param", "case=loadgen"]
    extra = {"telnyx": ["--auth-token", TELNYX_TOKEN], "exotel": ["--basic-auth", EXOTEL_BASIC],
             "plivo": ["--param", f"token={FORK_SECRET}"], "vonage": ["--param", f"token={FORK_SECRET}"],
             "freeswitch": ["--param", f"token={FORK_SECRET}", "--rate", "16000", "--mix", "stereo"],
             "asterisk_ws": ["--param", f"TOKEN={FORK_SECRET}"],
             "audiohook": ["--api-key", AUDIOHOOK_KEY, "--client-secret", AUDIOHOOK_SECRET_B64]}
    return args + extra.get(dialect, [])


async def loadgen(args: list[str]) -> tuple[int | None, str]:
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "daemon.cli", "loadgen", *args, cwd=str(ROOT),
                                                env={**os.environ, **ENV}, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.STDOUT)
    out, _ = await proc.communicate()
    return proc.returncode, out.decode(errors="replace")[-800:]


async def test_every_dialect_alerts_on_the_marked_leg_only(tmp_path: Path) -> None:
    marked, clean = load_clip("marked"), load_clip("clean")
    async with receiver() as hook:
        cfg = write_config(tmp_path / "c.toml", outbox=tmp_path / "o.sqlite3", webhook_url=hook.url, extra=E2E_CONFIG)
        daemon = await start_daemon(cfg, env=ENV)
        try:
            port = daemon.ports["websocket"]
            expected_leg: dict[str, str] = {}  # spoof call id → the leg that must alert
            clean_ids: set[str] = set()
            jobs = []
            for dialect in WS_DIALECTS:
                for case in ("spoof", "clean"):
                    call_id = f"{dialect}-{case}-{uuid.uuid4().hex[:8]}"
                    second = dialect in MARK_SECOND
                    a, b = (clean, marked) if case == "spoof" and second else \
                        (marked, clean) if case == "spoof" else (clean, clean)
                    p = plan(dialect, call_id, a, b, authority=f"127.0.0.1:{port}")
                    if case == "spoof":
                        expected_leg[call_id] = p.legs[1] if second and len(p.legs) > 1 else p.legs[0]
                    else:
                        clean_ids.add(call_id)
                    jobs.append(play(port, p))
            for case in ("spoof", "clean"):
                call_uuid = uuid.uuid4()
                (expected_leg.__setitem__(str(call_uuid), "channel") if case == "spoof"
                 else clean_ids.add(str(call_uuid)))
                jobs.append(play_audiosocket(daemon.ports["audiosocket"],
                                             audiosocket_plan(call_uuid, marked if case == "spoof" else clean)))
            generated = [loadgen(loadgen_args(dialect, daemon.ports)) for dialect in ALL]
            results = await asyncio.gather(*jobs, *generated)
            codes, outputs = results[:len(jobs)], results[len(jobs):]
            assert all(code in (1000, None) for code in codes), codes
            assert all(rc == 0 for rc, _ in outputs), outputs
            total = len(expected_leg) + len(clean_ids) + len(ALL)
            await hook.wait_for(lambda: len(hook.of_type("call.summary")) >= total, timeout=90)
            text = await daemon.metrics()
            for _ in range(100):  # alerts are committed before their summary; let in-flight deliveries land
                if "spoofwatch_outbox_pending 0.0" in text:
                    break
                await asyncio.sleep(0.1)
                text = await daemon.metrics()
        finally:
            rc = await daemon.stop()
        assert rc == 0

    assert hook.rejected == 0
    summaries = {d.body["data"]["call_id"]: d.body["data"] for d in hook.of_type("call.summary")}
    generated = {s["ingest"]: call_id for call_id, s in summaries.items()
                 if call_id not in expected_leg and call_id not in clean_ids}
    assert set(generated) == set(ALL), generated  # one loadgen call per dialect, each its own ingest
    expected_leg.update({call_id: LOADGEN_LEG[ingest] for ingest, call_id in generated.items()})
    assert set(summaries) == set(expected_leg) | clean_ids
    alerts = [d.body["data"] for d in hook.of_type("call.spoof_detected")]
    by_call: dict[str, list[str]] = {}
    for alert in alerts:
        by_call.setdefault(alert["call_id"], []).append(alert["leg"])
    assert by_call == {call_id: [leg] for call_id, leg in expected_leg.items()}, by_call
    for call_id, leg in expected_leg.items():
        legs = summaries[call_id]["legs"]
        assert legs[leg]["alerted"] is True and legs[leg]["spoofed_segments"] >= 2
        assert all(not s["alerted"] for name, s in legs.items() if name != leg)
    for call_id in clean_ids:
        assert not summaries[call_id]["alerted"]
    # each dialect is its own ingest: in the webhooks and in spoofwatch_calls_total
    ingests = {s["call_id"].split("-", 1)[0]: s["ingest"] for s in summaries.values()
               if re.fullmatch(r"[a-z_]+-(spoof|clean)-[0-9a-f]{8}", s["call_id"])}
    assert ingests == {d: d for d in WS_DIALECTS}
    assert {s["ingest"] for s in summaries.values()} == set(ALL)
    vonage = next(s for s in summaries.values() if s["ingest"] == "vonage")
    assert set(vonage["legs"]) == {"mixed"} and "mixed" in vonage["metadata"]["legs"]
    for dialect in ALL:
        assert f'spoofwatch_calls_total{{ingest="{dialect}",outcome="alerted"}} 2.0' in text, dialect
