"""Config: every rule names the file, the key path and the rule; env overrides; schema."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import tomli_w
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from controller.config.loader import load_config
from controller.config.model import StationConfig
from controller.errors import ConfigError
from drivers.errors import format_loc
from tests.support import REPO, run_swapctl

PROFILES = REPO / "config" / "profiles"
BASE = f'station_id = "s1"\nprofiles_dir = "{PROFILES}"\n[storage]\ndir = "/tmp/x"\n'
TCP_RACK = (
    '[[racks]]\nname = "a"\ntransport = "tcp"\nhost = "10.0.0.2"\nunit_id = 1\nslots = [1, 2]\n'
)

# (id, toml text, the exact error lines without the "FILE: " prefix)
BAD_CONFIGS = [
    ("missing-station-id", '[storage]\ndir = "/tmp/x"\n', ["station_id: required key is missing"]),
    (
        "station-id-with-slash",
        'station_id = "a/b"\n',
        [
            "station_id: must be 1-64 characters of letters, digits, '_', '-' or '.', starting"
            " with a letter or digit (it is used in MQTT topics and file names) (got 'a/b')"
        ],
    ),
    (
        "typo-key",
        BASE + '[mqtt]\nhots = "x"\n',
        ["mqtt.hots: unknown key (did you mean 'host'?) (got 'x')"],
    ),
    (
        "unknown-section",
        BASE + '[mqttt]\nhost = "x"\n',
        ["mqttt: unknown key (did you mean 'mqtt'?)"],
    ),
    ("port-range", BASE + "[mqtt]\nport = 70000\n", ["mqtt.port: must be <= 65535 (got 70000)"]),
    (
        "port-type",
        BASE + '[mqtt]\nport = "1883x"\n',
        ["mqtt.port: must be an integer (got '1883x')"],
    ),
    (
        "password-inline",
        BASE + '[mqtt]\nusername = "u"\npassword = "hunter2"\n',
        [
            "mqtt.password: a password is never written in the config file: use"
            " mqtt.password_file or the SWAPSTATION_MQTT__PASSWORD environment variable (got ***)"
        ],
    ),
    (
        "tls-cert-without-key",
        BASE + '[mqtt.tls]\ncert_file = "c.pem"\n',
        ["mqtt.tls.key_file: cert_file and key_file go together: give both or neither"],
    ),
    (
        "unit-id-range",
        BASE + TCP_RACK.replace("unit_id = 1", "unit_id = 300"),
        ["racks[0].unit_id: must be <= 247 (got 300)"],
    ),
    (
        "tcp-without-host",
        BASE + TCP_RACK.replace('host = "10.0.0.2"\n', ""),
        ['racks[0].host: required when transport = "tcp"'],
    ),
    (
        "bad-transport",
        BASE + TCP_RACK.replace('"tcp"', '"udp"'),
        ["racks[0].transport: must be one of 'tcp' or 'rtu' (got 'udp')"],
    ),
    (
        "rtu-without-serial",
        BASE + '[[racks]]\nname = "b"\ntransport = "rtu"\nunit_ids = [1, 2]\nslots = [1, 2]\n',
        ['racks[0].serial: required when transport = "rtu" (device, baudrate, parity)'],
    ),
    (
        "unit-ids-length",
        BASE + '[[racks]]\nname = "b"\ntransport = "rtu"\nunit_ids = [1]\nslots = [1, 2]\n'
        '[racks.serial]\ndevice = "/dev/ttyUSB0"\n',
        ["racks[0]: unit_ids has 1 entries but slots has 2: one unit id per slot"],
    ),
    (
        "duplicate-slot-across-racks",
        BASE + TCP_RACK + TCP_RACK.replace('name = "a"', 'name = "b"').replace("[1, 2]", "[2, 3]"),
        ["racks[1].slots: slot 2 is already served by rack 'a'"],
    ),
    (
        "duplicate-rack-name",
        BASE + TCP_RACK + TCP_RACK.replace("[1, 2]", "[3]"),
        ["racks[1].name: rack names must be unique, also used by racks[0] (got 'a')"],
    ),
    (
        "step-timeout-typo",
        BASE + "[swap.step_timeouts_s]\nliftin = 5\n",
        ["swap.step_timeouts_s.liftin: unknown key (did you mean 'lifting'?) (got 5)"],
    ),
    (
        "negative-timeout",
        BASE + "[swap.step_timeouts_s]\nlifting = -1\n",
        ["swap.step_timeouts_s.lifting: must be > 0 (got -1)"],
    ),
    (
        "robot-shares-rack-line",
        BASE + '[[racks]]\nname = "b"\ntransport = "rtu"\nprofile = "simrack-unit"\n'
        'unit_ids = [1]\nslots = [1]\n[racks.serial]\ndevice = "/dev/ttyUSB0"\n'
        '[robot.serial]\ndevice = "/dev/ttyUSB0"\n',
        [
            "robot.serial.device: the robot needs a serial port of its own; /dev/ttyUSB0 is used"
            " by racks[0]"
        ],
    ),
    (
        "serial-url",
        BASE + '[robot.serial]\ndevice = "tcp://10.0.0.7:4001"\n',
        [
            "robot.serial.device: a URL must be socket://HOST:PORT or rfc2217://HOST:PORT (a"
            " serial device server) (got 'tcp://10.0.0.7:4001')"
        ],
    ),
    (
        "backoff-order",
        BASE + "[mqtt]\nreconnect_min_s = 5\nreconnect_max_s = 1\n",
        ["mqtt: reconnect_max_s (1.0) must be >= reconnect_min_s (5.0)"],
    ),
    (
        "station-io-unknown-profile",
        BASE + '[station_io]\ntransport = "tcp"\nhost = "10.0.0.5"\nprofile = "nosuch"\n',
        [f"station_io.profile: no such profile in {PROFILES} (got 'nosuch')"],
    ),
    (
        "ocpp-profile-2-needs-wss",
        BASE + '[ocpp]\ncsms_url = "ws://csms.example/ocpp"\n',
        ["ocpp: security_profile 2 needs a wss:// csms_url (TLS)"],
    ),
    (
        "ocpp-url",
        BASE + '[ocpp]\ncsms_url = "https://csms.example/ocpp?x=1"\n',
        [
            "ocpp.csms_url: must be a ws:// or wss:// URL with a host (got"
            " 'https://csms.example/ocpp?x=1')"
        ],
    ),
    (
        "ocpp-needs-a-password",
        BASE + '[ocpp]\ncsms_url = "wss://csms.example/ocpp"\n',
        [
            "ocpp.password_file: security profile 2 needs a password: a password_file or the"
            " SWAPSTATION_OCPP__PASSWORD environment variable"
        ],
    ),
    (
        "ocpp-password-in-file",
        BASE + '[ocpp]\ncsms_url = "wss://csms.example/ocpp"\npassword = "hunter2"\n',
        [
            "ocpp.password: a password is never written in the config file: use"
            " ocpp.password_file or the SWAPSTATION_OCPP__PASSWORD environment variable (got ***)",
            "ocpp.password_file: security profile 2 needs a password: a password_file or the"
            " SWAPSTATION_OCPP__PASSWORD environment variable",
        ],
    ),
    (
        "ocpp-identity",
        BASE + '[ocpp]\ncsms_url = "wss://csms.example/ocpp"\nidentity = "a:b"\n',
        ["ocpp.identity: must match ^[A-Za-z0-9*\\-_=+|@.]{1,48}$ (got 'a:b')"],
    ),
    (
        "log-level",
        BASE + '[logging]\nlevel = "loud"\n',
        ["logging.level: must be one of 'debug', 'info', 'warning' or 'error' (got 'loud')"],
    ),
]


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "station.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("text", "expected"), [(t, e) for _, t, e in BAD_CONFIGS], ids=[i for i, _, _ in BAD_CONFIGS]
)
def test_bad_config_names_file_key_and_rule(tmp_path: Path, text: str, expected: list[str]) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    assert info.value.lines() == [f"{path}: {line}" for line in expected]


def test_every_error_is_reported_at_once(tmp_path: Path) -> None:
    text = 'station_id = "a/b"\n[mqtt]\nport = 0\nhots = 1\n[logging]\nformat = "xml"\n'
    with pytest.raises(ConfigError) as info:
        load_config(_write(tmp_path, text), environ={})
    paths = [issue.path for issue in info.value.issues]
    assert sorted(paths) == ["logging.format", "mqtt.hots", "mqtt.port", "station_id"]


def test_check_config_cli_exit_2_and_one_line_per_error(tmp_path: Path) -> None:
    path = _write(tmp_path, BASE + "[mqtt]\nport = 0\nhots = 1\n")
    result = run_swapctl("check-config", str(path))
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"{path}: mqtt.port: must be >= 1 (got 0)",
        f"{path}: mqtt.hots: unknown key (did you mean 'host'?) (got 1)",
    ]
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "no such file"),
        (b"station_id = = 1\n", "not valid TOML: Invalid value (at line 1, column 14)"),
        (b"\xff\xfe station", "not UTF-8 text (bad byte at offset 0)"),
    ],
    ids=["missing", "not-toml", "not-utf8"],
)
def test_unusable_file_is_one_clear_line(
    tmp_path: Path, content: bytes | None, message: str
) -> None:
    path = tmp_path / "station.toml"
    if content is not None:
        path.write_bytes(content)
    result = run_swapctl("check-config", str(path))
    assert result.returncode == 2
    assert result.stderr.splitlines() == [f"{path}: {message}"]


def test_directory_instead_of_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path, environ={})
    assert info.value.lines() == [f"{tmp_path}: is a directory, not a config file"]


def test_env_overrides_file_values(tmp_path: Path) -> None:
    path = _write(tmp_path, BASE + '[mqtt]\nhost = "file-host"\nport = 1883\n')
    config = load_config(
        path,
        environ={
            "SWAPSTATION_MQTT__HOST": "env-host",
            "SWAPSTATION_MQTT__PORT": "8883",
            "SWAPSTATION_STATION_ID": "from-env",
            "SWAPSTATION_CONFIG": "/ignored/not/a/setting",
        },
    )
    assert (config.mqtt.host, config.mqtt.port, config.station_id) == ("env-host", 8883, "from-env")
    assert config.topic_root == "swapstation/from-env"


def test_bad_env_override_is_attributed_to_the_variable(tmp_path: Path) -> None:
    path = _write(tmp_path, BASE)
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={"SWAPSTATION_MQTT__PORT": "abc", "SWAPSTATION_MQQT__HOST": "h"})
    assert info.value.lines() == [
        f"{path}: mqqt: unknown setting (did you mean 'mqtt'?)"
        " [from environment variable SWAPSTATION_MQQT__HOST]",
        f"{path}: mqtt.port: must be an integer (got 'abc')"
        " [from environment variable SWAPSTATION_MQTT__PORT]",
    ]


def test_password_from_file_relative_to_config(tmp_path: Path) -> None:
    (tmp_path / "secret").write_text("s3cr3t-pw\n")
    path = _write(tmp_path, BASE + '[mqtt]\nusername = "station"\npassword_file = "secret"\n')
    config = load_config(path, environ={})
    assert config.mqtt.password is not None
    assert config.mqtt.password.get_secret_value() == "s3cr3t-pw"
    assert "s3cr3t-pw" not in repr(config)


def test_password_from_env_is_masked_in_errors(tmp_path: Path) -> None:
    path = _write(tmp_path, BASE)
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={"SWAPSTATION_MQTT__PASSWORD": "s3cr3t-pw"})
    text = "\n".join(info.value.lines())
    assert text == f"{path}: mqtt.username: required when a password is set"
    assert "s3cr3t-pw" not in text


def test_ocpp_password_from_the_environment(tmp_path: Path) -> None:
    path = _write(tmp_path, BASE + '[ocpp]\ncsms_url = "wss://csms.example/ocpp"\n')
    config = load_config(path, environ={"SWAPSTATION_OCPP__PASSWORD": "s3cr3t-pw"})
    assert config.ocpp is not None and config.ocpp.password is not None
    assert config.ocpp.password.get_secret_value() == "s3cr3t-pw"
    assert "s3cr3t-pw" not in repr(config)


def test_missing_password_file(tmp_path: Path) -> None:
    path = _write(tmp_path, BASE + '[mqtt]\nusername = "u"\npassword_file = "nope"\n')
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    assert info.value.lines() == [
        f"{path}: mqtt.password_file: cannot read: No such file or directory"
        f" (got '{tmp_path / 'nope'}')"
    ]


@pytest.mark.parametrize(
    ("content", "messages"),
    [
        (
            (PROFILES / "simplc.toml")
            .read_text()
            .replace("lift_lower = 1, ", "")
            .replace('type = "u16"', 'type = "f32"'),
            ['coils: missing [\'lift_lower\']; registers: heartbeat must be type = "u16" or "u32"'],
        ),
        ("name = = 1\n", ["not valid TOML: Invalid value (at line 1, column 8)"]),
        (
            (PROFILES / "simrack.toml").read_text(),  # a rack profile given for the PLC
            [
                "discrete_inputs: Field required",
                "coils: Field required",
                "registers: Field required",
            ],
        ),
    ],
    ids=["invalid", "not-toml", "rack-profile"],
)
def test_station_io_profile_must_load(tmp_path: Path, content: str, messages: list[str]) -> None:
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    (profiles / "plc.toml").write_text(content)
    text = (
        'station_id = "s1"\n[storage]\ndir = "/tmp/x"\n'
        '[station_io]\ntransport = "tcp"\nhost = "10.0.0.5"\nprofile = "plc"\n'
    )
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    lines = info.value.lines()
    expected = [f"{path}: station_io.profile: {profiles / 'plc.toml'}: {m}" for m in messages]
    assert lines[: len(expected)] == expected
    assert all(line.startswith(f"{path}: station_io.profile: ") for line in lines)
    result = run_swapctl("check-config", str(path))
    assert result.returncode == 2
    assert result.stderr.splitlines() == lines


def test_demo_config_is_valid() -> None:
    path = REPO / "config" / "demo.toml"
    result = run_swapctl("check-config", str(path))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"{path}: valid\n")


def test_production_example_is_valid_once_its_files_exist(tmp_path: Path) -> None:
    text = (REPO / "config" / "station.example.toml").read_text()
    text = text.replace("/etc/swapstation/tls/", f"{tmp_path}/")
    for name in ("fleet-ca.pem", "pss-0042.crt", "pss-0042.key"):
        (tmp_path / name).write_text("not checked for content here")
    (tmp_path / "mqtt-password").write_text("pw\n")
    (tmp_path / "profiles").symlink_to(PROFILES)
    path = _write(tmp_path, text)
    result = run_swapctl("check-config", str(path))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"{path}: valid"
    assert len(lines) <= 24  # one screen
    assert "rack-b    rtu /dev/serial/by-path/" in result.stdout


def test_missing_tls_file_is_named(tmp_path: Path) -> None:
    path = _write(tmp_path, BASE + '[mqtt.tls]\nca_file = "ca.pem"\n')
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    assert info.value.lines() == [
        f"{path}: mqtt.tls.ca_file: cannot read: No such file or directory"
        f" (got '{tmp_path / 'ca.pem'}')"
    ]


def test_summary_never_shows_the_password(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("s3cr3t-pw")
    path = _write(tmp_path, BASE + '[mqtt]\nusername = "u"\npassword_file = "pw"\n')
    result = run_swapctl("check-config", str(path))
    assert result.returncode == 0, result.stderr
    assert "user 'u' with password" in result.stdout
    assert "s3cr3t-pw" not in result.stdout + result.stderr


def test_config_schema_is_json_schema_of_the_model() -> None:
    result = run_swapctl("config-schema")
    assert result.returncode == 0
    schema = json.loads(result.stdout)
    assert schema == StationConfig.model_json_schema()
    assert schema["required"] == ["station_id"]
    assert schema["additionalProperties"] is False


def test_format_loc() -> None:
    assert format_loc(("racks", 1, "serial", "device")) == "racks[1].serial.device"
    assert format_loc(()) == ""


# --- hostile config files ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[mqtt]\nhost = " + "[" * 500 + "1" + "]" * 500 + "\n", "nested 500 deep: at most 16"),
        ("x = " + "{a = " * 300 + "1" + "}" * 300 + "\n", "nested 300 deep: at most 16"),
        ('station_id = "s"\n' + "a." * 600 + "b = 1\n", "keys nested 601 deep: at most 16"),
        ("x = '" + "a" * 1_000_001 + "'\n", "characters: at most 1000000"),
    ],
)
def test_a_hostile_config_is_one_line_and_exit_78_not_a_traceback(
    tmp_path: Path, text: str, message: str
) -> None:
    path = tmp_path / "station.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    (line,) = info.value.lines()
    assert line.startswith(f"{path}: ") and line.endswith(message), line
    checked = run_swapctl("check-config", str(path))
    assert checked.returncode == 2 and checked.stderr == f"{line}\n", checked
    ran = run_swapctl("run", "--config", str(path))
    assert ran.returncode == 78 and "Traceback" not in ran.stderr, ran.stderr


@settings(max_examples=300, deadline=None)
@given(
    st.recursive(
        st.sampled_from(["1", '"x"', "true", "1.5", "[]", "{}", "'''a'''", "2026-01-01"]),
        lambda inner: st.one_of(
            st.lists(inner, max_size=3).map(lambda xs: "[" + ", ".join(xs) + "]"),
            st.lists(inner, max_size=3).map(
                lambda xs: "{" + ", ".join(f"k{i} = {x}" for i, x in enumerate(xs)) + "}"
            ),
        ),
        max_leaves=60,
    ),
    st.sampled_from(["", "[mqtt]\n", "[[racks]]\n", "a.b.c."]),
    st.binary(max_size=20),
)
def test_any_toml_is_loaded_or_refused_in_lines_never_raised(
    tmp_path_factory: pytest.TempPathFactory, value: str, section: str, noise: bytes
) -> None:
    """Whatever the file holds, the loader answers with a config or with ConfigError lines."""
    path = tmp_path_factory.mktemp("hostile") / "station.toml"
    key = "x = " if not section.endswith(".") else f"{section}x = "
    head = "" if section.endswith(".") else section
    path.write_bytes((BASE + head + key + value + "\n").encode() + noise)
    lines: list[str] = []
    try:
        load_config(path, environ={})
    except ConfigError as exc:
        lines = exc.lines() or ["(no lines)"]
    assert all(line.startswith(f"{path}: ") for line in lines), lines


@pytest.mark.timeout(10)
@pytest.mark.parametrize(
    ("device", "taken"),
    [
        ("socket://10.0.0.7:4001", "socket://10.0.0.7:4001"),
        ("rfc2217://moxa-1.local:950", "rfc2217://moxa-1.local:950"),
        ("robot-port", "{dir}/robot-port"),  # a path stays relative to the config file
    ],
)
def test_a_serial_line_is_a_port_or_a_device_server_url(
    tmp_path: Path, device: str, taken: str
) -> None:
    path = _write(tmp_path, BASE + f'[robot.serial]\ndevice = "{device}"\n')
    config = load_config(path, environ={})
    assert config.robot is not None
    assert config.robot.serial.device == taken.format(dir=tmp_path)


def _load_with(text: str) -> tuple[StationConfig | None, list[str]]:
    """`text` as a station.toml in a fresh folder: the config, or None and the refusal's lines."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "station.toml"
        path.write_text(text)
        try:
            return load_config(path, environ={}), []
        except ConfigError as exc:
            return None, exc.lines()


@pytest.mark.timeout(60)
@settings(max_examples=200, deadline=None)
@given(
    st.one_of(
        st.text(max_size=300),
        st.builds(
            lambda scheme, host, port: f"{scheme}://{host}:{port}",
            st.sampled_from(["socket", "rfc2217", "tcp", "SOCKET", ""]),
            st.text(max_size=40),
            st.one_of(st.integers(-5, 10**7).map(str), st.text(max_size=6)),
        ),
    )
)
def test_any_serial_device_is_taken_or_refused_by_name(device: str) -> None:
    """A path, a device server URL, or one line naming `robot.serial.device`: never a crash."""
    config, lines = _load_with(BASE + tomli_w.dumps({"robot": {"serial": {"device": device}}}))
    if config is None:
        assert any("robot.serial.device" in line for line in lines), lines
        return
    assert config.robot is not None
    taken = config.robot.serial.device
    if "://" in device:
        assert taken == device
        assert taken.split("://")[0] in {"socket", "rfc2217"}
    else:
        assert taken and Path(taken).is_absolute()


@pytest.mark.timeout(60)
@settings(max_examples=150, deadline=None)
@given(
    st.one_of(
        st.floats(allow_nan=True, allow_infinity=True),
        st.integers(-(10**12), 10**12),
        st.text(max_size=20),
        st.booleans(),
        st.lists(st.integers(), max_size=3),
    )
)
def test_the_sequencers_timer_is_taken_in_0_to_1_s_or_refused_by_name(value: object) -> None:
    """`swap.evaluate_every_s`: 0 < s <= 1, else one line naming it; 0, negative, NaN refused."""
    import math

    try:
        text = tomli_w.dumps({"swap": {"evaluate_every_s": value}})
    except (TypeError, ValueError):
        return  # not expressible in TOML
    config, lines = _load_with(BASE + text)
    if config is None:
        assert any("swap.evaluate_every_s" in line for line in lines), lines
        return
    taken = config.swap.evaluate_every_s
    assert math.isfinite(taken) and 0 < taken <= 1.0
    assert not isinstance(value, str | list | bool)


def _numeric_keys(model: type[BaseModel], prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every number-typed key under `model`'s tables (not inside arrays of tables)."""
    from controller.config.model import admitted_types, is_number_type

    out: list[tuple[str, ...]] = []
    for name, field in model.model_fields.items():
        key = field.alias or name
        leaves = admitted_types(field.annotation)
        sub = [leaf for leaf in leaves if isinstance(leaf, type) and issubclass(leaf, BaseModel)]
        if sub:
            out += _numeric_keys(sub[0], (*prefix, key))
        elif bool not in leaves and any(is_number_type(leaf) for leaf in leaves):
            out.append((*prefix, key))
    return out


NUMERIC_KEYS = _numeric_keys(StationConfig)


def test_the_walk_finds_the_number_keys() -> None:
    """The walk below covers the config's tables (a guard against an empty sample)."""
    assert ("swap", "evaluate_every_s") in NUMERIC_KEYS
    assert ("power", "grid_limit_kw") in NUMERIC_KEYS
    assert len(NUMERIC_KEYS) >= 20, NUMERIC_KEYS


@pytest.mark.timeout(60)
@settings(max_examples=100, deadline=None)
@given(key=st.sampled_from(NUMERIC_KEYS), value=st.booleans())
def test_a_number_key_given_true_or_false_is_refused_by_name(
    key: tuple[str, ...], value: bool
) -> None:
    """`true` is not 1: any number key set to a boolean is one line naming it, never taken."""
    data = _example_without_files()
    table = data
    for part in key[:-1]:
        table = table.setdefault(part, {})
    table[key[-1]] = value
    config, lines = _load_with(tomli_w.dumps(data))
    assert config is None
    said = f"{'.'.join(key)}: must be "
    got = f"(got '{str(value).lower()}')"
    assert any(said in line and line.endswith(got) for line in lines), lines


def _example_without_files() -> dict[str, Any]:
    """The production example's settings, less the files it names (TLS, password), with the
    shipped profiles."""
    import tomllib

    data = tomllib.loads((REPO / "config" / "station.example.toml").read_text())
    data["mqtt"].pop("tls")
    data["mqtt"].pop("password_file")
    data["profiles_dir"] = str(PROFILES)
    return data


def test_the_example_without_its_files_loads() -> None:
    """The base of the test above is valid: a refusal there is the boolean's."""
    config, lines = _load_with(tomli_w.dumps(_example_without_files()))
    assert config is not None, lines


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ('[[racks]]\nname = "a"\ntransport = "tcp"\nhost = "h"\nunit_id = 1\nslots = [1, true]\n',
         "racks[0].slots[1]: must be an integer (got 'true')"),
        ("[power]\nmin_ready = { STD75 = false }\n",
         "power.min_ready.STD75: must be an integer (got 'false')"),
        ('[robot.serial]\ndevice = "/dev/ttyX"\nstopbits = true\n',
         "robot.serial.stopbits: must be one of 1 or 2 (got 'true')"),
    ],
)  # fmt: skip
def test_a_boolean_inside_an_array_or_table_of_numbers_is_refused_at_its_place(
    text: str, line: str
) -> None:
    """Not the whole array or table: the item, by its index or key."""
    config, lines = _load_with(BASE + text)
    assert config is None
    assert any(got.endswith(line) for got in lines), lines
