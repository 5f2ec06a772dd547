// Plain Kotlin/JVM, no Android dependency: the protocol, the sampler, the tokenizers and the benchmark engine.
// `./gradlew :core:check` runs the same test program as core/build-and-test.sh (which CI uses, without Gradle).
import org.jetbrains.kotlin.gradle.dsl.JvmTarget

plugins {
    alias(libs.plugins.kotlin.jvm)
}

java {
    sourceCompatibility = JavaVersion.VERSION_17
    targetCompatibility = JavaVersion.VERSION_17
}

kotlin {
    compilerOptions {
        jvmTarget.set(JvmTarget.JVM_17)
        allWarningsAsErrors.set(true)
    }
}

val coreTests by tasks.registering(JavaExec::class) {
    description = "Runs the core's tests against the repository's golden protocol files."
    group = "verification"
    classpath = sourceSets["test"].runtimeClasspath
    mainClass.set("dev.fraqat.deploy.core.test.RunnerKt")
    args("--repo", rootDir.resolve("..").absolutePath)
}

// The tests are a plain program (no JUnit offline), so Gradle's own test task has nothing to discover.
tasks.named("test") { enabled = false }
tasks.named("check") { dependsOn(coreTests) }
