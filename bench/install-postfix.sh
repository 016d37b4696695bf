#!/usr/bin/env bash
# bench/install-postfix.sh: install Debian's postfix package for smtp-sink
# and smtp-source (the benchmark's reference server and client, and the
# independent SMTP server of the end-to-end tests), as root or through
# sudo. Postfix is preseeded "Local only": it delivers nothing off this
# machine. Used by .ci/run and by the benchmarks when the tools are missing.
set -euo pipefail

if [ -x /usr/sbin/smtp-sink ] && [ -x /usr/sbin/smtp-source ]; then
	exit 0
fi
if [ "$(id -u)" -eq 0 ]; then
	SUDO=()
elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
	SUDO=(sudo -n)
else
	echo "needs Postfix's smtp-sink and smtp-source: run as root, or apt-get install postfix" >&2
	exit 1
fi
command -v apt-get >/dev/null || { echo "no apt-get: install Postfix (smtp-sink, smtp-source) by hand" >&2; exit 1; }

echo "installing Postfix for smtp-sink and smtp-source (Local only: it delivers nothing out)" >&2
echo "postfix postfix/main_mailer_type select Local only" | "${SUDO[@]}" debconf-set-selections
echo "postfix postfix/mailname string localhost.blaster.test" | "${SUDO[@]}" debconf-set-selections
# A mirror hiccup need not stop the install: the package lists at hand may do.
"${SUDO[@]}" apt-get update -q >&2 || echo "apt-get update failed: trying with the package lists at hand" >&2
"${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends postfix >&2
[ -x /usr/sbin/smtp-sink ] && [ -x /usr/sbin/smtp-source ] ||
	{ echo "smtp-sink or smtp-source still missing after installing postfix" >&2; exit 1; }
