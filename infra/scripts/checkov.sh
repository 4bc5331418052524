#!/usr/bin/env bash
# Run checkov's Bicep policies over infra/ by hand. It is not part of `make test` or CI; see
# "Offline checks" in infra/README.md for the measured install and run times and the reason.
# The script keeps checkov in its own virtualenv (outside the repo) so that its pins never
# meet the project's; extra arguments go to checkov (e.g. --quiet, -o json).
set -euo pipefail

readonly CHECKOV_VERSION="3.3.30"
# checkov 3.3.30 pins pycep-parser 0.5.1, which cannot parse `extension` statements
# (infra/app/graph-permission.bicep). 0.7.1, the version the offline tests use, parses every
# file and checkov runs unchanged with it, so it replaces the pin (pip warns about the pin).
readonly PYCEP_VERSION="0.7.1"

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
venv="${CHECKOV_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/guest-redemption-reset/checkov-${CHECKOV_VERSION}}"

installed() {
  [[ -x "${venv}/bin/checkov" ]] && "${venv}/bin/python" -c \
    "import importlib.metadata as m, sys; sys.exit(m.version('pycep-parser') != '${PYCEP_VERSION}')" 2>/dev/null
}

if ! installed; then
  echo "installing checkov ${CHECKOV_VERSION} into ${venv} (about a minute)..." >&2
  python3 -m venv "$venv"
  "${venv}/bin/pip" install --quiet --disable-pip-version-check "checkov==${CHECKOV_VERSION}"
  "${venv}/bin/pip" install --quiet --disable-pip-version-check --no-deps "pycep-parser==${PYCEP_VERSION}" 2>/dev/null
fi

# --skip-download: no calls to the Prisma Cloud API (offline, and nothing is uploaded).
exec "${venv}/bin/checkov" --directory "${repo_root}/infra" --framework bicep --skip-download --compact "$@"
