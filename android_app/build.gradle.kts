// The Android demo app (app/) and its plain-Kotlin core (core/), which the repository's CI compiles and tests on
// the JVM without Gradle (core/build-and-test.sh). Versions live in ../fraqat_deploy/device/app_versions.toml.
plugins {
    alias(libs.plugins.android.application) apply false
    alias(libs.plugins.kotlin.jvm) apply false
}
