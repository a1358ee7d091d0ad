print("storaged")
