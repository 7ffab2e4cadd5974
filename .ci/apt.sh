# Sourced by the .ci/install_*.sh scripts: apt-get install as root, or through sudo.
# apt_install NAME PACKAGE...   (NAME prefixes the error message)
apt_install() {
    local name="$1"
    shift
    local sudo=""
    if [[ "$(id -u)" != "0" ]]; then
        if command -v sudo >/dev/null 2>&1; then
            sudo="sudo"
        else
            echo "$name: need root (or sudo) to apt-get install $*" >&2
            return 1
        fi
    fi
    export DEBIAN_FRONTEND=noninteractive
    $sudo apt-get update -qq
    $sudo apt-get install -y -qq --no-install-recommends "$@"
}
