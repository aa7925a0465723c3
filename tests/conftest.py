pytest_plugins = ("tests.plugins.photos", "tests.plugins.broker")
