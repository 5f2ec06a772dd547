"""The phone side of fraqat-deploy: the request/result protocol shared with the Android app, the host engine that
runs a request on the HTP simulator (the app's Python counterpart), and the transports that carry a request to a
phone over adb or to the simulator."""
