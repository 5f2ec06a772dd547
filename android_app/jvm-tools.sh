# Shared by core/build-and-test.sh and app/compile-check.sh (sourced, not run): the app's version matrix, the Kotlin
# compiler from npm and jars from Maven Central, each installed once.
#   matrix_version NAME        a [versions] entry of fraqat_deploy/device/app_versions.toml
#   ensure_kotlinc VERSION     installs kotlin-compiler@VERSION from npm into $FRAQAT_KOTLIN_HOME (default
#                              ~/.cache/fraqat-kotlin); sets $kotlinc and $kotlin_home
#   maven_jar GROUP ARTIFACT VERSION   prints the jar's path in the local Maven repository ($FRAQAT_MAVEN_REPO,
#                              default ~/.m2/repository), fetching it once with `mvn dependency:get`
# Exit code 2 when a tool or a download is missing.

jvm_tools_repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
matrix="$jvm_tools_repo/fraqat_deploy/device/app_versions.toml"

matrix_version() {
    sed -n "s/^$1 *= *\"\([^\"]*\)\".*/\1/p" "$matrix" | head -n1
}

command -v java >/dev/null || { echo "java not found: install a JDK (17 or newer)" >&2; exit 2; }

ensure_kotlinc() {
    local want="$1"
    local cache="${FRAQAT_KOTLIN_HOME:-$HOME/.cache/fraqat-kotlin}"
    kotlin_home="$cache/node_modules/kotlin-compiler"
    kotlinc="$kotlin_home/bin/kotlinc"
    local installed
    # no package.json yet (a fresh machine) is "not installed", not an error under set -e / pipefail
    installed="$(sed -n 's/.*"version": *"\([^"]*\)".*/\1/p' "$kotlin_home/package.json" 2>/dev/null | head -n1 || true)"
    if [[ ! -x "$kotlinc" || "$installed" != "$want" ]]; then
        command -v npm >/dev/null || { echo "npm not found: it installs the Kotlin compiler (kotlin-compiler@$want)" >&2; exit 2; }
        echo "installing kotlin-compiler@$want into $cache" >&2
        mkdir -p "$cache"
        npm install --prefix "$cache" --no-audit --no-fund --loglevel=error "kotlin-compiler@$want" >&2
    fi
}

maven_jar() {
    local group="$1" artifact="$2" ver="$3"
    local m2="${FRAQAT_MAVEN_REPO:-$HOME/.m2/repository}"
    local jar="$m2/${group//.//}/$artifact/$ver/$artifact-$ver.jar"
    if [[ ! -f "$jar" ]]; then
        command -v mvn >/dev/null || { echo "mvn not found: it fetches $group:$artifact:$ver from Maven Central" >&2; exit 2; }
        echo "fetching $group:$artifact:$ver from Maven Central" >&2
        mvn -q -B dependency:get -Dartifact="$group:$artifact:$ver" -Dtransitive=false "-Dmaven.repo.local=$m2" >&2 \
            || { echo "cannot fetch $group:$artifact:$ver from Maven Central" >&2; exit 2; }
        [[ -f "$jar" ]] || { echo "mvn did not leave $jar" >&2; exit 2; }
    fi
    echo "$jar"
}
