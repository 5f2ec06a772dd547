pluginManagement {
    repositories {
        google()
        mavenCentral()
        gradlePluginPortal()
    }
}

dependencyResolutionManagement {
    repositoriesMode.set(RepositoriesMode.FAIL_ON_PROJECT_REPOS)
    repositories {
        google()
        mavenCentral()
    }
    versionCatalogs {
        // the version matrix the CLI reads too (compile.json's app_runtime, the QNN mismatch warning)
        create("libs") { from(files("../fraqat_deploy/device/app_versions.toml")) }
    }
}

rootProject.name = "fraqat-deploy-app"
include(":app", ":core")
