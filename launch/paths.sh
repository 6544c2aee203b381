# Sourced by launch/*.sh before any `cd`: path arguments mean what they mean where the caller is.
#   abs PATH           PATH made absolute against the caller's directory (an existing parent's ../ resolved)
#   abs_existing X     X made absolute if it is a relative path that exists there, else X as is
#   abs_args ARG...    sets the array `resolved`: each ARG (or the VALUE of --KEY=VALUE) through abs_existing
#   abs_config C       CONFIG[:ARG]: the file made absolute, ARG through abs_existing
abs() {
  local dir
  case $1 in
    /*) printf '%s\n' "$1" ;;
    .) printf '%s\n' "$PWD" ;;
    */*) if dir=$(CDPATH= cd "${1%/*}" 2>/dev/null && pwd); then printf '%s/%s\n' "$dir" "${1##*/}"; else printf '%s/%s\n' "$PWD" "${1#./}"; fi ;;
    *) printf '%s/%s\n' "$PWD" "$1" ;;
  esac
}
abs_existing() { if [ -n "$1" ] && [ -e "$1" ]; then abs "$1"; else printf '%s\n' "$1"; fi; }
abs_args() {
  resolved=()
  local a
  for a in "$@"; do
    case $a in
      --*=*) resolved+=("${a%%=*}=$(abs_existing "${a#*=}")") ;;
      -*) resolved+=("$a") ;;
      *) resolved+=("$(abs_existing "$a")") ;;
    esac
  done
}
abs_config() {
  local file=${1%%:*}
  case $1 in
    *:*) printf '%s:%s\n' "$(abs "$file")" "$(abs_existing "${1#*:}")" ;;
    *) abs "$file" ;;
  esac
}
