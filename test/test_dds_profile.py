"""The package's Fast DDS profile: applied unless the user chose one, and well-formed."""

import xml.etree.ElementTree as ET

from facediff_ros.adapters import dds

NS = {"d": "http://www.eprosima.com"}


def test_profile_is_set_only_when_the_user_has_none():
    env = {}
    dds.configure_environment(env)
    assert env[dds.PROFILE_ENV] == str(dds.profile_path())
    mine = {dds.PROFILE_ENV: "/etc/my_profile.xml"}
    dds.configure_environment(mine)
    assert mine[dds.PROFILE_ENV] == "/etc/my_profile.xml"


def test_profile_has_a_shm_segment_for_several_vga_clouds_and_udp():
    root = ET.parse(dds.profile_path()).getroot()
    transports = {t.findtext("d:transport_id", namespaces=NS): t
                  for t in root.iterfind(".//d:transport_descriptor", NS)}
    kinds = {k: t.findtext("d:type", namespaces=NS) for k, t in transports.items()}
    assert sorted(kinds.values()) == ["SHM", "UDPv4"]
    shm = next(t for t in transports.values() if t.findtext("d:type", namespaces=NS) == "SHM")
    vga_cloud = 640 * 480 * 16  # bytes of one XYZRGB cloud
    assert int(shm.findtext("d:segment_size", namespaces=NS)) >= 4 * vga_cloud
    participant = root.find(".//d:participant", NS)
    assert participant.get("is_default_profile") == "true"
    used = [e.text for e in participant.iterfind(".//d:userTransports/d:transport_id", NS)]
    assert sorted(used) == sorted(transports)
    assert participant.findtext(".//d:useBuiltinTransports", namespaces=NS) == "false"


def test_participants_announce_themselves_often_enough_for_a_quick_join():
    root = ET.parse(dds.profile_path()).getroot()
    period = root.find(".//d:participant//d:discovery_config/d:leaseAnnouncement", NS)
    seconds = (int(period.findtext("d:sec", namespaces=NS))
               + int(period.findtext("d:nanosec", namespaces=NS)) * 1e-9)
    assert 0 < seconds <= 1.0
