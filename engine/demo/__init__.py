"""The pali-demo-shapes task's scene generator (the bundled model lives in engine/demo_model/; the
recipe that trains it is recipes/demo_shapes/, outside the installed package).

    python -m engine.demo.shapes --out demo_images --count 4   # sample images + their truth
"""
