"""harness/core/distro.py (+ sources.auto_tarball, hostarch): the embedded default kernel follows the
Debian release; faked /usr/src and os-release."""
import pytest

from harness.core import distro, hostarch
from harness.build import sources
from harness.core.errors import SourceError

BOOKWORM = 'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nNAME="Debian GNU/Linux"\nVERSION_ID="12"\n' \
           'VERSION_CODENAME=bookworm\nID=debian\n'
TRIXIE = 'PRETTY_NAME="Debian GNU/Linux 13 (trixie)"\nNAME="Debian GNU/Linux"\nVERSION_ID="13"\n' \
         'VERSION_CODENAME=trixie\nID=debian\n'
SID = 'PRETTY_NAME="Debian GNU/Linux forky/sid"\nNAME="Debian GNU/Linux"\nVERSION_CODENAME=forky\nID=debian\n'
SUPPORTED = ["5.4", "6.1", "6.12"]


def info(tmp_path, text):
    f = tmp_path / "os-release"
    f.write_text(text)
    return distro.os_release(f)


def usr_src(tmp_path, *versions, extra=()):
    d = tmp_path / "src"
    d.mkdir()
    for v in versions:
        (d / f"linux-source-{v}.tar.xz").write_bytes(b"")
    for name in extra:
        (d / name).mkdir()
    return d


def test_os_release_is_parsed(tmp_path):
    i = info(tmp_path, TRIXIE + "# comment\n\nHOME_URL='https://www.debian.org/'\n")
    assert i["VERSION_ID"] == "13" and i["HOME_URL"] == "https://www.debian.org/"
    assert distro.release_kernel(i) == "6.12"
    assert distro.release_kernel(info(tmp_path, BOOKWORM)) == "6.1"
    assert distro.os_release(tmp_path / "absent") == {}


def test_ubuntu_is_not_taken_for_debian(tmp_path):
    assert distro.release_kernel(info(tmp_path, 'ID=ubuntu\nVERSION_ID="13"\n')) is None


@pytest.mark.parametrize("release,installed,chosen,why", [
    (TRIXIE, ["6.12"], "6.12", "Debian GNU/Linux 13 (trixie) ships linux-source-6.12"),
    (TRIXIE, ["6.1", "6.12"], "6.12", "ships linux-source-6.12"),
    (BOOKWORM, ["6.1", "6.12"], "6.1", "Debian GNU/Linux 12 (bookworm) ships linux-source-6.1"),
    (BOOKWORM, ["6.12"], "6.12", "linux-source-6.1 is not installed"),
    (SID, ["6.1", "6.12", "6.16"], "6.12", "the newest of linux-source-6.12, linux-source-6.1"),
    (TRIXIE, ["6.1"], "6.1", "own linux-source-6.12 is not installed"),
], ids=["trixie", "trixie-both", "bookworm-both", "bookworm-backports-only", "sid-no-profile-6.16",
        "trixie-only-6.1"])
def test_auto_tarball_follows_the_release(tmp_path, release, installed, chosen, why):
    src = usr_src(tmp_path, *installed, extra=["linux-config-6.12"])
    tarball, reason = distro.choose_tarball(SUPPORTED, src, info(tmp_path, release))
    assert tarball == src / f"linux-source-{chosen}.tar.xz"
    assert why in reason


def test_no_tarball_names_the_package(tmp_path):
    src = usr_src(tmp_path, "6.16")
    tarball, reason = distro.choose_tarball(SUPPORTED, src, info(tmp_path, TRIXIE))
    assert tarball is None and "install linux-source-6.12" in reason and str(src) in reason


def test_sources_auto_tarball_is_a_source_error_naming_usr_src(tmp_path):
    src = usr_src(tmp_path)
    with pytest.raises(SourceError, match=r"kernel.tarball: auto: no .*/src/linux-source-X.Y.tar.xz"):
        sources.auto_tarball(src, distro.os_release(tmp_path / "none"))
    (src / "linux-source-6.12.tar.xz").write_bytes(b"")
    tarball, _ = sources.auto_tarball(src, info(tmp_path, BOOKWORM))
    assert tarball.name == "linux-source-6.12.tar.xz", "the repository's own profiles include 6.12"


def test_setup_installs_the_releases_linux_source(tmp_path):
    never = lambda package: pytest.fail(f"apt-cache asked about {package} for a known release")  # noqa: E731
    assert distro.source_package(info(tmp_path, TRIXIE), SUPPORTED[::-1], never) == "linux-source-6.12"
    assert distro.source_package(info(tmp_path, BOOKWORM), SUPPORTED[::-1], never) == "linux-source-6.1"
    pkgs = hostarch.apt_packages("x86_64", info(tmp_path, TRIXIE))
    assert "linux-source-6.12" in pkgs and "linux-source-6.1" not in pkgs


def test_unknown_release_asks_apt_newest_first(tmp_path):
    asked = []

    def apt_has(package):
        asked.append(package)
        return package == "linux-source-6.1"
    assert distro.source_package(info(tmp_path, SID), ["6.12", "6.1", "5.4"], apt_has) == "linux-source-6.1"
    assert asked == ["linux-source-6.12", "linux-source-6.1"]


def test_profile_versions_are_newest_first():
    versions = distro.profile_versions()
    assert versions.index("6.12") < versions.index("6.1") < versions.index("5.4")
