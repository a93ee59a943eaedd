#!/usr/bin/env bash
# The Debian archive this machine's apt already uses, read from its own
# sources, so that a host behind a local mirror or a caching proxy gets its
# packages (bookworm-backports, the forky root) from the same place.
#
#   scripts/debian-archive.sh        prints two lines: URI=<uri> and
#                                    SIGNED_BY=<keyring file, or empty>
#   . scripts/debian-archive.sh      defines debian_archive (sets
#                                    DEBIAN_URI and DEBIAN_SIGNED_BY)
#
# The source chosen is the first enabled `deb` entry whose suites include the
# release's own codename (VERSION_CODENAME in /etc/os-release, e.g.
# bookworm): deb822 stanzas in /etc/apt/sources.list.d/*.sources first, then
# one-line entries in /etc/apt/sources.list and /etc/apt/sources.list.d/*.list.
# Signed-By is kept when it names a file; an inline key is not copied (apt
# then falls back to its trusted keyrings). APT_ETC overrides /etc/apt and
# OS_RELEASE /etc/os-release (for tests of this script).

debian_archive() {
  local etc=${APT_ETC:-/etc/apt} osr=${OS_RELEASE:-/etc/os-release} codename line
  codename=$(. "$osr" && echo "${VERSION_CODENAME:-}")
  if [ -z "$codename" ]; then
    echo "debian-archive: no VERSION_CODENAME in $osr" >&2
    return 1
  fi
  local f
  DEBIAN_URI= DEBIAN_SIGNED_BY=
  shopt -s nullglob
  for f in "$etc"/sources.list.d/*.sources; do
    # One stanza per paragraph; fields are case-insensitive; continuation
    # lines (an inline key) start with a space; `#` lines are comments.
    line=$(awk -v want="$codename" '
      function flush() {
        if (types ~ /(^| )deb( |$)/ && enabled != "no" && (" " suites " ") ~ (" " want " ") && uri != "" && !done) {
          print uri "\t" signed; done = 1
        }
        types = ""; suites = ""; uri = ""; signed = ""; enabled = ""; last = ""
      }
      /^#/ { next }
      /^[ \t]*$/ { flush(); next }
      /^[ \t]/ { next }
      {
        k = tolower($0); sub(/:.*/, "", k)
        v = $0; sub(/^[^:]*:[ \t]*/, "", v); sub(/[ \t]+$/, "", v)
        if (k == "types") types = v
        else if (k == "suites") suites = v
        else if (k == "uris") { split(v, u, /[ \t]+/); uri = u[1] }
        else if (k == "signed-by") signed = v
        else if (k == "enabled") enabled = tolower(v)
      }
      END { flush() }' "$f")
    if [ -n "$line" ]; then
      DEBIAN_URI=${line%%$'\t'*}
      DEBIAN_SIGNED_BY=${line#*$'\t'}
      break
    fi
  done
  if [ -z "$DEBIAN_URI" ]; then
    for f in "$etc"/sources.list "$etc"/sources.list.d/*.list; do
      [ -f "$f" ] || continue
      # deb [opt=val ...] URI SUITE COMPONENT...
      line=$(awk -v want="$codename" '
        $1 != "deb" { next }
        {
          i = 2; signed = ""
          if ($2 ~ /^\[/) {
            while (i <= NF) {
              o = $i; gsub(/[\[\]]/, "", o)
              if (o ~ /^signed-by=/) { sub(/^signed-by=/, "", o); signed = o }
              if ($i ~ /\]$/) { i++; break }
              i++
            }
          }
          if ($(i + 1) == want) { print $i "\t" signed; exit }
        }' "$f")
      if [ -n "$line" ]; then
        DEBIAN_URI=${line%%$'\t'*}
        DEBIAN_SIGNED_BY=${line#*$'\t'}
        break
      fi
    done
  fi
  shopt -u nullglob
  if [ -z "$DEBIAN_URI" ]; then
    echo "debian-archive: no enabled deb source for suite $codename in $etc/sources.list or $etc/sources.list.d/" >&2
    return 1
  fi
  DEBIAN_URI=${DEBIAN_URI%/}
  # Only a keyring file can be reused in a new source or by debootstrap.
  case $DEBIAN_SIGNED_BY in
    /*) [ -f "$DEBIAN_SIGNED_BY" ] || DEBIAN_SIGNED_BY= ;;
    *) DEBIAN_SIGNED_BY= ;;
  esac
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  set -euo pipefail
  debian_archive
  printf 'URI=%s\nSIGNED_BY=%s\n' "$DEBIAN_URI" "$DEBIAN_SIGNED_BY"
fi
