# Copyright 2026 The sops Authors. Licensed under the Apache License, Version 2.0.
"""Private implementation modules of sops. Import from :mod:`sops` instead."""
