#!/usr/bin/env bash
# Compile the app's plain-Kotlin core, its host entry point and its tests with kotlinc (one invocation) and run the
# tests with JUnit on the JVM.
#
#   android_app/core/build-and-test.sh [--out DIR] [--only TEXT] [--android-org-json]   compile if needed, run the tests
#   android_app/core/build-and-test.sh --classpath                 compile if needed, print the runtime classpath
#
# --out DIR keeps the files the engine tests write (results, status, images) for the Python side; --only TEXT runs the
# tests whose name contains TEXT. --android-org-json runs the same compiled tests on Android's own org.json (the
# classes of Robolectric's android-all jar, `android-all` in the matrix) instead of Maven Central's: the core is
# compiled against one and must link and behave the same against the other, as on the phone.
#
# Versions come from the app's version matrix, fraqat_deploy/device/app_versions.toml (`kotlin`, `onnxruntime-jvm`,
# `org-json`, `junit`). The Kotlin compiler comes from the npm registry (package kotlin-compiler) and is installed once
# into $FRAQAT_KOTLIN_HOME (default ~/.cache/fraqat-kotlin). From Maven Central, with `mvn dependency:get`, once, into
# ~/.m2: the desktop ONNX Runtime Java package (com.microsoft.onnxruntime:onnxruntime: the newest on Maven Central,
# whose plugin-EP API the onnxruntime-qnn 2.7.0 QNN plugin accepts), org.json:json (the JSON API Android ships in its
# framework) and JUnit's console launcher (org.junit.platform:junit-platform-console-standalone, one jar).
# Needs a JDK (17+) and, for the first run, npm and mvn.
# Exits non-zero when a tool cannot be installed, the code does not compile, or any test fails.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
# shellcheck source=../jvm-tools.sh
source "$here/../jvm-tools.sh"
KOTLIN_VERSION="$(matrix_version kotlin)"
ORT_JAVA_VERSION="$(matrix_version onnxruntime-jvm)"
JSON_VERSION="$(matrix_version org-json)"
JUNIT_VERSION="$(matrix_version junit)"
[[ -n "$KOTLIN_VERSION" && -n "$ORT_JAVA_VERSION" && -n "$JSON_VERSION" && -n "$JUNIT_VERSION" ]] || {
    echo "$matrix lacks kotlin / onnxruntime-jvm / org-json / junit versions" >&2; exit 2; }
build="$here/build/jvm"
jar="$build/core-tests.jar"
ensure_kotlinc "$KOTLIN_VERSION"
ort_jar="$(maven_jar com.microsoft.onnxruntime onnxruntime "$ORT_JAVA_VERSION")"
json_jar="$(maven_jar org.json json "$JSON_VERSION")"
junit_jar="$(maven_jar org.junit.platform junit-platform-console-standalone "$JUNIT_VERSION")"
runtime="$ort_jar:$json_jar"

mapfile -t sources < <(find "$here/src/main/kotlin" "$here/src/host/kotlin" "$here/src/test/kotlin" -name '*.kt' | sort)
stale=1
if [[ -f "$jar" ]]; then
    stale=0
    for f in "${sources[@]}" "$0" "$matrix"; do
        if [[ "$f" -nt "$jar" ]]; then stale=1; break; fi
    done
fi
if [[ $stale == 1 ]]; then
    mkdir -p "$build"
    started=$(date +%s)
    # -Werror: the compiler is pinned, so a warning is something to fix, not noise
    "$kotlinc" -jvm-target 17 -Werror -include-runtime -cp "$runtime:$junit_jar" -d "$build/core-tests.part.jar" "${sources[@]}"
    mv "$build/core-tests.part.jar" "$jar"
    echo "compiled ${#sources[@]} files in $(( $(date +%s) - started )) s" >&2
else
    echo "core-tests.jar is up to date" >&2
fi
if [[ "${1:-}" == "--classpath" ]]; then
    echo "$jar:$runtime"
    exit 0
fi
props=(-Dfraqat.repo="$repo")
while [[ $# -gt 0 ]]; do
    case "$1" in
        --out) mkdir -p "$2"; props+=(-Dfraqat.out="$(cd "$2" && pwd)"); shift 2 ;;
        --only) props+=(-Dfraqat.only="$2"); shift 2 ;;
        --android-org-json)
            android_all_version="$(matrix_version android-all)"
            [[ -n "$android_all_version" ]] || { echo "$matrix lacks the android-all version" >&2; exit 2; }
            runtime="$ort_jar:$(maven_jar org.robolectric android-all "$android_all_version")"
            shift ;;
        *) echo "unknown option $1 (use --out DIR, --only TEXT, --android-org-json, --classpath)" >&2; exit 2 ;;
    esac
done
# one line per test ([OK] / [X]) in a tree, then JUnit's counts; exit code 1 when a test failed or none ran
exec java "${props[@]}" -jar "$junit_jar" execute --class-path "$jar:$runtime" \
    --select-class dev.fraqat.deploy.core.test.CoreTests --fail-if-no-tests --disable-banner --disable-ansi-colors --details=tree --details-theme=ascii
