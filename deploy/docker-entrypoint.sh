#!/bin/sh
# Entrypoint of the Corpora image: refuses to start the service without its production settings, then
# hands over to the command (exec, so it runs as PID 1 and receives SIGTERM directly).
#
# Without CORPORA_DATABASE_URL / CORPORA_S3_ENDPOINT, `corpora serve` and `corpora migrate` would try to
# start embedded servers keeping data inside the container; without CORPORA_SIGNING_KEY_FILES every
# container would generate its own signing key, and a token issued by one replica would be refused by the
# next. CORPORA_ALLOW_EMBEDDED=true (with an image built with EMBEDDED=true) skips the check for a demo.
set -eu

missing=""
require() {
    # $1: the variable's name, $2: its value
    if [ -z "$2" ]; then
        missing="$missing $1"
    fi
}

if [ "${1:-}" = "corpora" ] && [ "${CORPORA_ALLOW_EMBEDDED:-false}" != "true" ]; then
    case "${2:-}" in
        serve)
            require CORPORA_DATABASE_URL "${CORPORA_DATABASE_URL:-}"
            require CORPORA_S3_ENDPOINT "${CORPORA_S3_ENDPOINT:-}"
            require CORPORA_SIGNING_KEY_FILES "${CORPORA_SIGNING_KEY_FILES:-}"
            ;;
        migrate)
            require CORPORA_DATABASE_URL "${CORPORA_DATABASE_URL:-}"
            ;;
    esac
    if [ -n "$missing" ]; then
        echo "corpora: not starting: set${missing} (see deploy/README.md)" >&2
        exit 64
    fi
fi

exec "$@"
