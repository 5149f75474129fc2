"""The fast entry-point scan finds exactly what importlib.metadata finds."""

from __future__ import annotations

import importlib.metadata

from mixcore.registry.discovery import GROUP, iter_entry_points


def test_scan_matches_importlib_metadata_for_installed_plugins():
    ours = {(ep.name, ep.value, ep.distribution, ep.version) for ep in iter_entry_points()}
    theirs = {
        (ep.name, ep.value, ep.dist.metadata["Name"], ep.dist.version)
        for ep in importlib.metadata.entry_points(group=GROUP)
    }
    assert ours == theirs
    assert {"qwen_vl", "blip2", "visualglm", "datasets"} <= {name for name, *_ in ours}


def write_dist(folder, dirname, name, version, entry_points):
    meta = folder / dirname
    meta.mkdir(parents=True)
    (meta / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n\nbody\n"
    )
    if entry_points is not None:
        (meta / "entry_points.txt").write_text(entry_points)


def test_first_distribution_on_the_path_wins_and_other_groups_are_ignored(tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    text = "[console_scripts]\nx = y:z\n\n[mixcore.plugins]\nfoo = foo_pkg.plugin\nbar = bar_pkg:obj [extra]\n"
    write_dist(first, "My_Plugin-1.0.dist-info", "My-Plugin", "1.0", text)
    write_dist(
        second, "my_plugin-2.0.dist-info", "my-plugin", "2.0", "[mixcore.plugins]\nfoo = other\n"
    )
    write_dist(second, "unrelated-3.0.dist-info", "unrelated", "3.0", "[console_scripts]\na = b\n")
    write_dist(second, "no_entry_points-1.0.dist-info", "no-entry-points", "1.0", None)
    found = iter_entry_points(path=[str(first), str(second), str(tmp_path / "missing")])
    assert [(e.name, e.module, e.attr, e.distribution, e.version) for e in found] == [
        ("foo", "foo_pkg.plugin", None, "My-Plugin", "1.0"),
        ("bar", "bar_pkg", "obj", "My-Plugin", "1.0"),
    ]
