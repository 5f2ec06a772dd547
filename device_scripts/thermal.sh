#!/system/bin/sh
# Print the phone's thermal status (0 = none ... 6 = shutdown), or nothing when the service does not say.
# Android's thermal service: `dumpsys thermalservice` prints "Thermal Status: N".
dumpsys thermalservice 2>/dev/null | sed -n 's/.*Thermal Status: *\([0-9][0-9]*\).*/\1/p' | head -n 1
