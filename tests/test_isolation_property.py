"""Property: an event is routed only to its own workspace's effective destination.

Random registrations and configurations are applied as table rows, random events are
routed, and an independent oracle (written from spec section 2, not from state.py) says
where each may go.
"""

from __future__ import annotations

import orjson
from hypothesis import HealthCheck, given, settings, strategies as st

from streamer.routing import Routed, Skip, route
from streamer.settings.state import SettingsState
from tests.support import activity_event, job_event

WORKSPACES = [str(100 + i) for i in range(8)]
PARTNERS = ["pa", "pb", "pc"]


def config(name: str, enabled: bool, jobs: str, ua: bool) -> dict:
    return {"enabled": enabled, "jobs": jobs, "user_activity": ua,
            "destination": {"type": "http", "provider": "generic", "url": f"https://logs.example/{name}"}}


configs = st.builds(config, st.sampled_from(["x", "y"]), st.booleans(), st.sampled_from(["off", "status", "details"]),
                    st.booleans())
registrations = st.dictionaries(st.sampled_from(WORKSPACES),
                                st.tuples(st.sampled_from(PARTNERS), st.sampled_from(["customer", "admin"])))
own_configs = st.dictionaries(st.sampled_from(WORKSPACES), configs)
partner_configs = st.dictionaries(st.sampled_from(PARTNERS), configs)
events = st.lists(st.tuples(st.sampled_from(WORKSPACES + ["999"]), st.sampled_from(["job_summary", "user_activity"])),
                  min_size=1, max_size=30)


def oracle(ws, kind, regs, own, partner):
    if ws not in regs:
        return None
    p, _role = regs[ws]
    chosen, dest_id = None, None
    if p in partner and partner[p]["enabled"]:
        chosen, dest_id = partner[p], f"partner:{p}"
    elif ws in own and own[ws]["enabled"]:
        chosen, dest_id = own[ws], f"workspace:{ws}"
    if chosen is None:
        return None
    wanted = chosen["user_activity"] if kind == "user_activity" else chosen["jobs"] == "status"
    return (dest_id, chosen["destination"]["url"]) if wanted else None


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(registrations, own_configs, partner_configs, events)
def test_every_event_goes_only_where_the_oracle_says(regs, own, partner, evs):
    state = SettingsState()
    offset = 0
    for ws, (p, role) in regs.items():
        row = {"registration": {"workspace_id": ws, "partner_id": p, "role": role, "external_id": None},
               "config": own.get(ws)}
        state.apply(f"ws/{ws}".encode(), orjson.dumps(row), offset)
        offset += 1
    for p, cfg in partner.items():
        state.apply(f"partner/{p}".encode(), orjson.dumps({"config": cfg}), offset)
        offset += 1
    for n, (ws, kind) in enumerate(evs):
        body = job_event(ws, f"j-{n}") if kind == "job_summary" else activity_event(ws, f"a-{n}")
        result = route(state, kind, orjson.dumps(body), ws.encode(), 10_000_000)
        expected = oracle(ws, kind, regs, own, {p: c for p, c in partner.items()})
        if expected is None:
            assert isinstance(result, Skip), (ws, kind, result)
        else:
            assert isinstance(result, Routed), (ws, kind, result)
            assert result.key.decode() == expected[0]
            assert orjson.loads(result.headers[0][1])["url"] == expected[1]
            assert dict(result.headers)["ws"] == ws.encode()
