#!/usr/bin/env bash
# System packages the test suite needs beyond Python (Debian/Ubuntu, apt). Idempotent: installs only what is
# missing, so CI may call it on every run. Without root it uses sudo where that works without a password.
#   pdflatex (texlive-latex-base): tests/orchestration/test_latex.py compiles the report's LaTeX table.
#   chromium (Debian's chromium): tests/orchestration/test_htmlreport.py renders the HTML report headless.
set -euo pipefail

# command -> package that provides it
declare -A NEEDED=([pdflatex]=texlive-latex-base [chromium]=chromium)

missing=()
for command in "${!NEEDED[@]}"; do
    command -v "$command" >/dev/null 2>&1 || missing+=("${NEEDED[$command]}")
done
if [ ${#missing[@]} -eq 0 ]; then
    echo "install-test-packages: everything present"
    exit 0
fi

as_root=()
if [ "$(id -u)" -ne 0 ]; then
    if sudo -n true 2>/dev/null; then
        as_root=(sudo -n)
    else
        echo "install-test-packages: need root (or passwordless sudo) to install: ${missing[*]}" >&2
        exit 1
    fi
fi
export DEBIAN_FRONTEND=noninteractive
# Another apt user (a parallel job) may hold the dpkg lock: wait for it rather than fail.
"${as_root[@]}" apt-get -o DPkg::Lock::Timeout=600 update -qq
"${as_root[@]}" apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${missing[@]}"
echo "install-test-packages: installed ${missing[*]}"
