"""``santi map``: the CRLB grid behind the heatmap, its summary, and the PNG."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.cli import cli
from agent.config import load_site, parse_site
from agent.sitemap import error_map, summarise
from positioning.bounds import crlb_rmse
from tests.helpers.sites import rectangle_site


def clustered_site(receivers: list[tuple[float, float, str]], *, one_sector: bool = False) -> str:
    """40 × 20 m, west and east halves (or one sector, the whole floor), these receivers at z = 2.5 m."""
    blocks = []
    for index, (x, y, kind) in enumerate(receivers):
        extra = f'node_name = "n{index}"\n' if kind == "node" else ""
        blocks.append(f'[[receivers]]\nid = "rx{index}"\nkind = "{kind}"\n{extra}x = {x}\ny = {y}\nz = 2.5\n')
    wifi = '\n[wifi]\ninterface = "wlan1mon"\n' if any(kind == "wifi" for _, _, kind in receivers) else ""
    nodes = '\n[nodes]\nhost = "127.0.0.1"\n' if any(kind == "node" for _, _, kind in receivers) else ""
    sectors = (("west", "West"),) if one_sector else (("west", "West"), ("east", "East"))
    site = rectangle_site(store_id="clustered", name="Receivers on one side", width=40, depth=20,
                          receivers="\n".join(blocks), sectors=sectors)
    return site + wifi + nodes


WEST_CLUSTER = [(2.0, 2.0, "node"), (8.0, 3.0, "node"), (3.0, 17.0, "node"), (9.0, 18.0, "node"),
                (5.0, 10.0, "ble"), (12.0, 9.0, "node"), (38.0, 10.0, "wifi")]


def test_bound_is_lower_among_the_receivers_than_in_the_far_corner(tmp_path: Path) -> None:
    site = parse_site(clustered_site(WEST_CLUSTER), tmp_path / "site.toml")
    emap = error_map(site, cell=0.5)
    dense, far = emap.at(6.0, 7.0), emap.at(39.5, 19.5)
    assert np.isfinite(dense)
    assert np.isfinite(far)
    assert dense < far / 3, (dense, far)
    # The Wi-Fi receiver on the east wall hears no tag and must not help the east side.
    assert emap.receiver_ids == ("rx0", "rx1", "rx2", "rx3", "rx4", "rx5")
    summary = summarise(emap)
    assert summary["worst_spot"]["x"] > 30.0


def test_grid_values_are_the_bound_at_each_cell_centre(tmp_path: Path) -> None:
    site = parse_site(clustered_site(WEST_CLUSTER), tmp_path / "site.toml")
    emap = error_map(site, cell=1.0)
    assert emap.rmse.shape == (20, 40)
    assert emap.xs[0] == 0.5
    assert emap.ys[-1] == 19.5
    rx = [r for r in site.receivers if r.kind != "wifi"]
    xyz = [(r.x, r.y, r.z) for r in rx]
    expected = crlb_rmse([(30.5, 4.5)], xyz, [r.path_loss_exponent for r in rx], [r.noise_sigma_db for r in rx],
                         site.tracking.emitter_height_m)[0]
    assert emap.rmse[4, 30] == expected


def test_cells_off_an_l_shaped_floor_are_not_counted(tmp_path: Path) -> None:
    text = clustered_site(WEST_CLUSTER[:-1]).replace(
        "outline = [[0, 0], [40, 0], [40, 20], [0, 20]]", "outline = [[0, 0], [40, 0], [40, 10], [20, 10], [20, 20], [0, 20]]"
    ).replace("polygon = [[20, 0], [40, 0], [40, 20], [20, 20]]", "polygon = [[20, 0], [40, 0], [40, 10], [20, 10]]")
    emap = error_map(parse_site(text, tmp_path / "site.toml"), cell=1.0)
    assert np.isnan(emap.rmse[15, 30])  # the missing quarter
    assert summarise(emap)["floor_m2"] == 600.0


@settings(derandomize=True, max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.floats(0.5, 39.5), st.floats(0.5, 19.5)), min_size=2, max_size=6),
       st.tuples(st.floats(0.5, 39.5), st.floats(0.5, 19.5)))
def test_another_receiver_never_makes_the_bound_worse(placed: list[tuple[float, float]],
                                                      extra: tuple[float, float]) -> None:
    base = [(x, y, "node") for x, y in placed]
    before = error_map(parse_site(clustered_site(base), Path("a.toml")), cell=2.0).rmse
    after = error_map(parse_site(clustered_site([*base, (*extra, "node")]), Path("b.toml")), cell=2.0).rmse
    both = np.isfinite(before)
    assert np.all(after[both] <= before[both] * (1 + 1e-9))
    assert np.all(np.isfinite(after[both]))


def test_one_receiver_gives_no_fix_and_the_summary_says_so(tmp_path: Path) -> None:
    # One sector: config check accepts a lone receiver only where there is no sector to choose.
    one_sector = clustered_site([(5.0, 5.0, "node")], one_sector=True)
    emap = error_map(parse_site(one_sector, tmp_path / "s.toml"), cell=1.0)
    summary = summarise(emap)
    assert summary["no_fix_share"] == 1.0
    assert summary["median_m"] is None
    assert summary["max_m"] is None
    json.dumps(summary)


def test_fishmonger_figures(example_site: Path) -> None:
    summary = summarise(error_map(load_site(example_site)))
    assert summary["median_m"] <= summary["p90_m"] <= summary["max_m"]
    assert 0.5 < summary["median_m"] < 10.0
    assert summary["no_fix_share"] == 0.0
    assert summary["floor_m2"] == 600.0
    assert "pi-wifi" not in summary["receivers"]
    assert len(summary["receivers"]) == 7


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def test_cli_writes_a_png_and_prints_the_summary(tmp_path: Path, example_site: Path) -> None:
    out = tmp_path / "map.png"
    result = CliRunner().invoke(cli, ["map", str(example_site), "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["png"] == str(out)
    assert set(summary) >= {"median_m", "p90_m", "max_m", "worst_spot"}
    width, height = png_size(out.read_bytes())
    assert width > 800
    assert height > 500
    assert out.stat().st_size > 50_000  # a heatmap, not an empty canvas


def test_cli_table_and_errors(tmp_path: Path, example_site: Path) -> None:
    result = CliRunner().invoke(cli, ["map", str(example_site), "--no-png"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    assert "median over the floor" in result.stdout
    assert "map written" not in result.stdout
    wifi_only = tmp_path / "wifi.toml"
    wifi_only.write_text(clustered_site([(5.0, 5.0, "wifi")]))
    failed = CliRunner().invoke(cli, ["map", str(wifi_only), "--no-png"])
    assert failed.exit_code == 2
    assert failed.stderr.strip().count("\n") == 0
    assert "no BLE-hearing receiver" in failed.stderr
    unwritable = CliRunner().invoke(cli, ["map", str(example_site), "--out", str(tmp_path / "no" / "dir.png")])
    assert unwritable.exit_code == 2
    assert "cannot write" in unwritable.stderr


def test_the_help_says_what_a_bright_patch_is_where_the_example_shows_it() -> None:
    # The example's worst spot is right under a receiver mounted high in a corner,
    # not where a receiver is missing: the help must not send an installer to add one there.
    site = load_site(Path(__file__).resolve().parent.parent / "examples" / "fishmonger.toml")
    emap = error_map(site, 0.25)
    worst = np.where(np.isfinite(emap.rmse), emap.rmse, -1.0)
    iy, ix = np.unravel_index(int(np.argmax(worst)), worst.shape)
    nearest = min(np.hypot(r.x - emap.xs[ix], r.y - emap.ys[iy]) for r in site.receivers if r.kind in ("ble", "node"))
    assert nearest < 1.0
    text = CliRunner().invoke(cli, ["map", "--help"], terminal_width=200).output
    assert "where a receiver is missing" not in text
    assert "right under a receiver mounted high" in " ".join(text.split())
