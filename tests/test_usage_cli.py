"""``asrd usage``: audio hours from the ledger, with a cost column only when ``[usage] prices``
is configured, in the table and in the CSV; the example config's price table loads."""

from __future__ import annotations

import re
from pathlib import Path

from asrd import config
from asrd.ledger import LedgerWrites, SqliteLedger, Usage

from .support import asrd

ROOT = Path(__file__).resolve().parent.parent
BASE = (
    '[ci]\nregion = "ap-guangzhou"\nbucket = "b-1250000000"\nendpoint = "http://127.0.0.1:1"\n'
    'secret_id = "AKID0000000000000000"\nsecret_key = "0000000000000000"\n'
    '[ci.callback]\nmq_name = "asr"\n'
)


def _config(tmp_path: Path, usage: str) -> Path:
    path = tmp_path / "asrd.toml"
    path.write_text(f'{BASE}[ledger]\nurl = "sqlite:///{tmp_path / "ledger.db"}"\n{usage}')
    return path


def _ledger(tmp_path: Path) -> None:
    ledger = SqliteLedger(tmp_path / "ledger.db")
    ledger.commit(
        LedgerWrites(
            usage=[
                Usage("s" + "1" * 32, "pq-main", "16k_zh", 5400.0),
                Usage("s" + "2" * 32, "pq-main", "8k_zh", 1800.0),
            ]
        )
    )
    ledger.close()


def _example_price_table() -> str:
    """The example config's ``[usage]`` section with its commented price table taken in."""
    text = (ROOT / "config" / "asrd.example.toml").read_text()
    section = text[text.index("[usage]") :]
    section = section[: section.index("\n[", 1)]
    wanted = re.compile(r'^# (currency = |\[usage\.prices\]|"\w+" = )')
    lines = [line[2:] for line in section.splitlines() if wanted.match(line)]
    return "[usage]\n" + "\n".join(lines) + "\n"


def test_the_example_price_table_loads(tmp_path: Path) -> None:
    settings = config.load(_config(tmp_path, _example_price_table()), environ={})
    assert settings.usage.currency == "USD"
    assert settings.usage.prices["16k_zh"] > 0 and "8k_zh" in settings.usage.prices


def test_cost_column_only_with_a_price_table(tmp_path: Path) -> None:
    _ledger(tmp_path)
    plain = asrd("usage", "--config", str(_config(tmp_path, "")), "--by", "engine")
    assert plain.returncode == 0, plain.stderr
    assert "cost" not in plain.stdout
    assert re.search(r"16k_zh\s+1\s+1\.500\n", plain.stdout)
    priced_cfg = _config(tmp_path, '[usage]\ncurrency = "USD"\n[usage.prices]\n"16k_zh" = 2.0\n')
    priced = asrd("usage", "--config", str(priced_cfg), "--by", "engine")
    assert priced.returncode == 0, priced.stderr
    assert "cost (USD)" in priced.stdout
    assert re.search(r"16k_zh\s+1\s+1\.500\s+3\.00\n", priced.stdout)
    assert re.search(r"8k_zh\s+1\s+0\.500\s+no price\n", priced.stdout)  # never shown as 0


def test_csv_carries_the_cost_only_with_a_price_table(tmp_path: Path) -> None:
    _ledger(tmp_path)
    plain = asrd("usage", "--config", str(_config(tmp_path, "")), "--by", "queue", "--csv")
    assert plain.stdout == "queue,jobs,audio_hours\npq-main,2,2.0000\n"
    priced_cfg = _config(
        tmp_path, '[usage]\ncurrency = "USD"\n[usage.prices]\n"16k_zh" = 2.0\n"8k_zh" = 1.0\n'
    )
    priced = asrd("usage", "--config", str(priced_cfg), "--by", "queue", "--csv")
    assert priced.stdout == "queue,jobs,audio_hours,cost_USD\npq-main,2,2.0000,3.50\n"
