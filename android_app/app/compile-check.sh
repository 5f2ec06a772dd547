#!/usr/bin/env bash
# Compile the app's Android layer (app/src/main/java) together with the plain-Kotlin core, with -Werror, against the
# real Android API 35 classes (Robolectric's android-all jar) and ONNX Runtime's Java API (the desktop
# com.microsoft.onnxruntime:onnxruntime jar: the same ai.onnxruntime classes as the Android AAR), so that a misspelled
# or removed Android or ONNX Runtime call fails. Optionally compile and run the app's JVM tests (app/src/test/kotlin).
#
#   android_app/app/compile-check.sh [--out DIR] [--app-src DIR] [--against CLASSES] [--test]
#
# --test also compiles app/src/test/kotlin and runs it with JUnit's console launcher (the JVM-testable parts of the
# Android layer: RunGuard, StartFailure, DmaBuf), keeping what it writes in DIR/test-out.
#
# --app-src DIR compiles that tree instead of app/src/main/java; with --against CLASSES (an earlier --out's classes)
# only the .kt files under DIR are compiled, against those classes (a quick re-check of a few changed files).
#
# Versions come from fraqat_deploy/device/app_versions.toml. Jars are fetched from Maven Central with
# `mvn dependency:get` into the local Maven repository (~/.m2) once; the Kotlin compiler is the npm package
# core/build-and-test.sh installs (same version, same cache). This is a compile check, not an APK build: D8 (dex) and
# aapt2 (resources, manifest) are not published on Maven Central, and neither are the ONNX Runtime Android / QNN
# AARs as this project's registry serves them: the QNN AAR's Kotlin helper is declared in
# tests/android_stubs (see android_app/README.md, "What is proven off the phone").
# Exits 0 when everything compiles (and the tests pass), 1 on a compile error or a failing test, 2 when a tool or a
# download is missing.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
out="$here/build/compile-check"
app_src="$here/src/main/java"
run_tests=0
against=""
while [[ $# -gt 0 ]]; do
    case "$1" in
        --out) out="$2"; shift 2 ;;
        --app-src) app_src="$2"; shift 2 ;;
        --against) against="$2"; shift 2 ;;
        --test) run_tests=1; shift ;;
        *) echo "unknown option $1 (use --out DIR, --app-src DIR, --against CLASSES, --test)" >&2; exit 2 ;;
    esac
done

# shellcheck source=../jvm-tools.sh
source "$here/../jvm-tools.sh"
KOTLIN_VERSION="$(matrix_version kotlin)"
ORT_VERSION="$(matrix_version onnxruntime-jvm)"
ANDROID_ALL_VERSION="$(matrix_version android-all)"
JUNIT_VERSION="$(matrix_version junit)"
[[ -n "$KOTLIN_VERSION" && -n "$ORT_VERSION" && -n "$ANDROID_ALL_VERSION" && -n "$JUNIT_VERSION" ]] || {
    echo "$matrix lacks kotlin / onnxruntime-jvm / android-all / junit versions" >&2; exit 2; }

android_all="$(maven_jar org.robolectric android-all "$ANDROID_ALL_VERSION")"
ort="$(maven_jar com.microsoft.onnxruntime onnxruntime "$ORT_VERSION")"

ensure_kotlinc "$KOTLIN_VERSION"

# org.json comes from android-all (the framework's): the Maven Central jar the core's JVM tests use is not added
classpath="$android_all:$ort"
if [[ -n "$against" ]]; then
    [[ -d "$against" ]] || { echo "--against $against: no such folder (run without --against first)" >&2; exit 2; }
    mapfile -t sources < <(find "$app_src" -name '*.kt' | sort)
    classpath="$against:$classpath"
else
    mapfile -t sources < <(find "$app_src" "$repo/android_app/core/src/main/kotlin" "$repo/tests/android_stubs" -name '*.kt' | sort)
fi
# the app's JVM tests compile in the same run (one compiler start), into the same classes
if [[ $run_tests == 1 ]]; then
    mapfile -t -O "${#sources[@]}" sources < <(find "$here/src/test/kotlin" -name '*.kt' | sort)
    junit_jar="$(maven_jar org.junit.platform junit-platform-console-standalone "$JUNIT_VERSION")"
    classpath="$classpath:$junit_jar"
fi
[[ ${#sources[@]} -gt 0 ]] || { echo "no Kotlin sources under $app_src" >&2; exit 2; }
rm -rf "$out"
mkdir -p "$out"
started=$(date +%s)
# -Werror: a deprecated Android or ONNX Runtime call is something to fix, not noise
if ! "$kotlinc" -jvm-target 17 -Werror -no-reflect -classpath "$classpath" -d "$out/classes" "${sources[@]}"; then
    echo "compile check FAILED: the Android layer does not compile against android-all $ANDROID_ALL_VERSION + onnxruntime $ORT_VERSION" >&2
    exit 1
fi
echo "compiled ${#sources[@]} files against android-all $ANDROID_ALL_VERSION (API 35) and onnxruntime $ORT_VERSION in $(( $(date +%s) - started )) s"

if [[ $run_tests == 1 ]]; then
    stdlib="$kotlin_home/lib/kotlin-stdlib.jar"
    java -Dfraqat.repo="$repo" -Dfraqat.out="$out/test-out" -jar "$junit_jar" execute \
        --class-path "$out/classes:$stdlib:$android_all" --select-class dev.fraqat.deploy.test.AppTests --fail-if-no-tests \
        --disable-banner --disable-ansi-colors --details=tree --details-theme=ascii || exit 1
fi
