"""docs/configuration.md stays in step with the schema."""

from __future__ import annotations

from pathlib import Path


def test_reference_doc_lists_every_key() -> None:
    import msgspec

    from pie import config

    doc = (Path(__file__).parents[2] / "docs" / "configuration.md").read_text()
    structs = [
        config.ServerConfig,
        config.AuthConfig,
        config.TelemetryConfig,
        config.RuntimeConfig,
        config.ModelConfig,
        config.SchedulerConfig,
        config.DriverConfig,
        *config.OPTIONS_BY_DRIVER.values(),
    ]
    for cls in structs:
        for f in msgspec.structs.fields(cls):
            if f.encode_name not in ("scheduler", "driver", "options"):
                assert f"`{f.encode_name}`" in doc, f"{cls.__name__}.{f.name} is undocumented"
