"""[gateway] certificate_file: the daemon attaches the chain to every batch, and refuses to start (naming the
file and why) with a certificate that is not for its key, not for its id, or not valid on its clock."""

from __future__ import annotations

import time
from pathlib import Path

import cbor2
import pytest

from lifeline.gateway.clock import ManualClock
from lifeline.gateway.config import load
from lifeline.gateway.daemon import Gateway, StartupError
from lifeline.gateway.metrics import parse_text
from lifeline.gateway.statusinfo import summarise
from lifeline.gateway.testing import MemoryAdapter, MemoryPublisher, TestNode, config_text, provision
from lifeline.protocols import batch, gwcert, keys
from lifeline.tools.testca import TestCA

GW = "gw-cert"


def write_config(state: Path, suite: str, cert: Path) -> Path:
    text = config_text(state, GW).replace("[metrics]", f'suite = "{suite}"\ncertificate_file = "{cert}"\n[metrics]', 1)
    path = state / "gateway.toml"
    path.write_text(text)
    return path


async def start(state: Path, suite: str, cert: Path, now_s: float,
                nodes: tuple[TestNode, ...] = ()) -> tuple[Gateway, MemoryPublisher, MemoryAdapter, ManualClock]:
    cfg = load(write_config(state, suite, cert))
    if nodes:
        provision(cfg.gateway.registry_db, list(nodes))
    pub, adapter, clock = MemoryPublisher(), MemoryAdapter(), ManualClock(int(now_s * 1000))
    gw = Gateway(cfg, publisher=pub, adapters=[adapter], clock=clock, run_forwarder=False)
    await gw.start()
    return gw, pub, adapter, clock


@pytest.mark.parametrize("suite", ["sm", "intl"])
async def test_batches_carry_the_chain_and_verify_against_the_ca(tmp_path: Path, suite: str) -> None:
    state = tmp_path / "state"
    state.mkdir()
    key = keys.generate_for(suite)
    keys.save_private_key(key, state / "gateway.key")
    ca = TestCA(tmp_path / "ca", "sm")
    cert = tmp_path / "gw.crt"
    cert.write_bytes(ca.issue(gwcert.make_csr(key, GW), GW))
    node = TestNode(bytes.fromhex("7e00000000000001"))
    gw, pub, adapter, clock = await start(state, suite, cert, time.time(), (node,))
    try:
        await adapter.hear(node.smoke(2), clock.now_ms(), rssi=-80)  # an alarm: batched at once
        await gw.flush()
        assert await gw.forward_all() >= 1
        ups = [p for t, p in pub.published if "/up/" in t]
        assert ups
        parsed = parse_text(gw.metrics.render())
        ((_, left),) = parsed["lifeline_gateway_certificate_expires_in_seconds"]
        assert 364 * 86400 < left <= 365 * 86400  # issued for 365 days, on the gateway's clock
        assert 364 * 86400 < summarise(parsed)["certificate_expires_in_s"] <= 365 * 86400
        trust = gwcert.CaTrust.from_files(ca.cert.read_bytes())
        for data in ups:
            assert cbor2.loads(cbor2.loads(data).value[0])[33] == gwcert.x5chain_header(
                gwcert.load_chain(cert.read_bytes()))[33]
            assert batch.verify(data, trust.resolver()).gateway_id == GW
    finally:
        await gw.stop()


async def test_a_certificate_that_does_not_fit_refuses_start(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    key, other = keys.generate_for("sm"), keys.generate_for("sm")
    keys.save_private_key(key, state / "gateway.key")
    ca = TestCA(tmp_path / "ca", "sm")
    cases = {
        "not for this gateway's signing key": ca.issue(gwcert.make_csr(other, GW), GW),
        "not gateway 'gw-cert'": ca.issue(gwcert.make_csr(key, "gw-other"), "gw-other"),
    }
    for i, (why, pem) in enumerate(cases.items()):
        cert = tmp_path / f"c{i}.crt"
        cert.write_bytes(pem)
        with pytest.raises(StartupError) as e:
            await start(state, "sm", cert, time.time())
        assert why in str(e.value) and str(cert) in str(e.value)
    good = tmp_path / "good.crt"
    good.write_bytes(ca.issue(gwcert.make_csr(key, GW), GW, days=10))
    with pytest.raises(StartupError, match="not now"):
        await start(state, "sm", good, time.time() + 11 * 86400)  # the gateway's clock says it expired
    with pytest.raises(StartupError, match="cannot read"):
        await start(state, "sm", tmp_path / "missing.crt", time.time())
